package nodefile

import (
	"fmt"
	"net"
	"regexp"
	"strings"
)

// registryName matches a registry host as an image reference spells it and
// as node tools look it up as a directory name: DNS labels with an
// optional port. It also keeps names from escaping a certs.d directory.
var registryName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$`)

// ValidRegistryName reports whether s is a registry host[:port].
func ValidRegistryName(s string) bool { return registryName.MatchString(s) }

// NormalizeAddress accepts the cache's host name, or an IPv4 or IPv6
// address (bracketed or not), and rejects anything with a scheme, port or
// path, which would end up mangled inside a mirror URL or location.
func NormalizeAddress(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	a := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	if ip := net.ParseIP(a); ip != nil {
		return ip.String(), nil
	}
	if strings.ContainsAny(addr, ":/[]@ ") || !registryName.MatchString(addr) {
		return "", fmt.Errorf("invalid address %q: want the cache's host name or IP, without scheme or port", addr)
	}
	return addr, nil
}

// TOMLString renders s as a TOML basic string. Control characters other
// than tab are escaped as \uXXXX, which TOML parsers (containerd's and
// containers/image's) read back unchanged; Go's strconv.Quote would produce
// \x escapes TOML lacks.
func TOMLString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
