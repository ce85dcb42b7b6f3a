package config

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// dockerHubNames are the names Docker Hub goes by in image references,
// containerd's ns parameter and configs, and the hosts that serve its API:
// the one list of them (see IsDockerHub).
var dockerHubNames = []string{"docker.io", "index.docker.io", "registry-1.docker.io"}

// IsDockerHub reports whether name (a host, or a registry as written in an
// image reference, any case) is one of Docker Hub's names.
func IsDockerHub(name string) bool {
	return slices.Contains(dockerHubNames, strings.ToLower(name))
}

// Serves reports whether registry (a host as written in an image reference or
// in containerd's ns parameter) names this upstream: its name, its remote's
// host, one of its aliases, or any of Docker Hub's names for a Docker Hub
// upstream. It is a lookup key into the configuration, never a host to dial.
func (u Upstream) Serves(registry string) bool {
	registry = strings.ToLower(strings.TrimSpace(registry))
	if registry == "" {
		return false
	}
	names := append([]string{u.Name, remoteHost(u.Remote)}, u.Aliases...)
	hub := false
	for _, n := range names {
		n = strings.ToLower(n)
		if n == registry {
			return true
		}
		hub = hub || IsDockerHub(n)
	}
	return hub && IsDockerHub(registry)
}

func remoteHost(remote string) string {
	u, err := url.Parse(remote)
	if err != nil {
		return ""
	}
	return u.Host
}

// HopPrefixes is AllowHops parsed, a bare address as a one-address prefix;
// nil when it is not set. Entries Validate refused are left out.
func (u Upstream) HopPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, h := range u.AllowHops {
		if p, err := parseHopPrefix(h); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func parseHopPrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}
