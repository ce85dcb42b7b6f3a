package containers

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/pelletier/go-toml/v2"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// DefaultDropIn is where `containers registries-conf` writes unless told
// otherwise. Drop-ins are read in lexical order and a later one wins for the
// same prefix; 50- leaves room for site files on either side.
const DefaultDropIn = "/etc/containers/registries.conf.d/50-multiproxy.conf"

// CertsDir is where containers/image looks for a registry's CA
// (HOST:PORT/ca.crt); registries.conf itself has no CA setting.
const CertsDir = "/etc/containers/certs.d"

// PullFromMirror restricts which pulls use a mirror (registries.conf's
// pull-from-mirror, containers/image 5.21+).
type PullFromMirror string

// The values of pull-from-mirror. Empty writes no key, which means all.
const (
	MirrorAll        PullFromMirror = "all"
	MirrorDigestOnly PullFromMirror = "digest-only"
	MirrorTagOnly    PullFromMirror = "tag-only"
)

// ParsePullFromMirror accepts "", all, digest-only or tag-only.
func ParsePullFromMirror(s string) (PullFromMirror, error) {
	switch p := PullFromMirror(s); p {
	case "", MirrorAll, MirrorDigestOnly, MirrorTagOnly:
		return p, nil
	}
	return "", fmt.Errorf("unsupported pull-from-mirror %q: want all, digest-only or tag-only", s)
}

// Options say where the generated files send pulls.
type Options struct {
	// Address is the cache's host name or IP as nodes reach it. Each
	// upstream's mirror is Address plus the port of that upstream's listen
	// address.
	Address string
	// Endpoint, when set, is the one host:port of the one-port listener
	// (listen_all) that every mirror points at instead, with the
	// upstream's name as path prefix.
	Endpoint string
	// TLS says every listener of the cache serves HTTPS (in one-port mode:
	// the listen_all one, as the config's top-level tls decides). An
	// upstream whose own TLS is enabled is reached over HTTPS in per-port
	// mode either way. Such a mirror is written without insecure
	// (registries.conf names no scheme; TLS is its default), and
	// daemon.json names it https:// and not among insecure-registries.
	TLS bool
	// PullFromMirror, when set, is written on every mirror.
	PullFromMirror PullFromMirror
}

// Registry is one [[registry]] table of the drop-in.
type Registry struct {
	// Upstream is the multiproxy upstream it sends pulls to, and Alias
	// the alias of that upstream this entry is for, if any.
	Upstream, Alias string
	// Remote is the upstream's remote URL, for the comment.
	Remote string
	// Prefix is matched against normalized image references.
	Prefix string
	// Location is the registry itself, pulled from directly when the
	// cache is unreachable; Insecure when it speaks plain HTTP.
	Location string
	Insecure bool
	// Mirror is the cache (host:port, with /<registry> in one-port mode);
	// MirrorInsecure when the cache serves plain HTTP.
	Mirror         string
	MirrorInsecure bool
	PullFromMirror PullFromMirror
}

// pathComponent is one component of a repository path in the reference
// grammar: what the one-port mirror's /<registry> segment must be.
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// Registries lists the [[registry]] tables for ups: one per upstream, named
// by the upstream's name, and one per further alias.
func Registries(ups []config.Upstream, opts Options) ([]Registry, error) {
	if _, err := ParsePullFromMirror(string(opts.PullFromMirror)); err != nil {
		return nil, err
	}
	eps, err := Endpoints(ups, opts)
	if err != nil {
		return nil, err
	}
	var out []Registry
	seen := map[string]string{} // prefix -> upstream that wrote it
	for i, u := range ups {
		location, insecure, err := remoteLocation(u.Remote)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		mirror := eps[i].Host
		if opts.Endpoint != "" {
			seg, err := pathSegment(u)
			if err != nil {
				return nil, err
			}
			mirror += "/" + seg
		}
		for j, name := range append([]string{u.Name}, u.Aliases...) {
			if !isDomain(name) {
				if j > 0 {
					continue // an alias for the one-port path only
				}
				return nil, fmt.Errorf("upstream %s: image references cannot name it: a first component without a dot or a port "+
					"(other than localhost) is a Docker Hub namespace; name the upstream after its registry's host", u.Name)
			}
			prefix, err := prefixFor(name)
			if err != nil {
				return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
			}
			if other, dup := seen[prefix]; dup {
				if other == u.Name {
					continue // an alias repeating the name, or two Docker Hub names
				}
				return nil, fmt.Errorf("upstream %s: prefix %q is already upstream %s's", u.Name, prefix, other)
			}
			seen[prefix] = u.Name
			r := Registry{
				Upstream:       u.Name,
				Remote:         u.Remote,
				Prefix:         prefix,
				Location:       location,
				Insecure:       insecure,
				Mirror:         mirror,
				MirrorInsecure: !eps[i].TLS,
				PullFromMirror: opts.PullFromMirror,
			}
			if j > 0 {
				r.Alias = name
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// isDomain reports whether name, as the first component of an image
// reference, names a registry rather than a Docker Hub namespace: it has a
// dot or a port, or is localhost (the reference grammar's rule).
func isDomain(name string) bool {
	return strings.ContainsAny(name, ".:") || name == "localhost"
}

// prefixFor is the prefix matching references to registry name: the name
// itself, or docker.io for index.docker.io, which containers/image
// normalizes to docker.io before matching.
func prefixFor(name string) (string, error) {
	if !nodefile.ValidRegistryName(name) {
		return "", fmt.Errorf("%q is not a registry host name with optional :port", name)
	}
	if strings.EqualFold(name, "index.docker.io") {
		return "docker.io", nil
	}
	return name, nil
}

// remoteLocation is the registry a remote URL names, as a registries.conf
// location, and whether it speaks plain HTTP. Docker Hub's API host is
// written as docker.io, which containers/image dials as
// registry-1.docker.io while looking up credentials under docker.io.
func remoteLocation(remote string) (string, bool, error) {
	u, err := url.Parse(remote)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may carry credentials
		}
		return "", false, fmt.Errorf("remote: %w", err)
	}
	if u.User != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", false, fmt.Errorf("remote %q: want http(s)://host[:port]", u.Redacted())
	}
	host := u.Host
	if u.Scheme == "https" && u.Port() == "443" {
		host = strings.TrimSuffix(host, ":443")
	}
	if config.IsDockerHub(host) {
		host = "docker.io"
	}
	return host, u.Scheme == "http", nil
}

// pathSegment is the /<registry> path prefix under which the one-port
// listener serves u: the first of its name, aliases and remote host (all
// names it answers for) that is a valid repository path component.
func pathSegment(u config.Upstream) (string, error) {
	names := append([]string{u.Name}, u.Aliases...)
	if r, err := url.Parse(u.Remote); err == nil {
		names = append(names, r.Host)
	}
	for _, n := range names {
		n = strings.ToLower(n)
		if pathComponent.MatchString(n) && u.Serves(n) {
			return n, nil
		}
	}
	return "", fmt.Errorf("upstream %s: in one-port mode the mirror names the upstream as a path segment (ADDRESS:PORT/<name>), "+
		"and a name with a port cannot be one; add an alias without a port (aliases: [\"%s\"])",
		u.Name, strings.NewReplacer(":", "-", ".", "-").Replace(strings.ToLower(u.Name)))
}

// Endpoint is where nodes reach the cache for one upstream.
type Endpoint struct {
	Upstream string
	// Host is host:port: the one-port endpoint, or the address with the
	// upstream's listen port.
	Host string
	// TLS when that listener serves HTTPS.
	TLS bool
}

// Endpoints lists where nodes reach the cache, one per upstream in the
// upstreams' order: the one-port endpoint for all of them, or Address with
// each upstream's listen port.
func Endpoints(ups []config.Upstream, opts Options) ([]Endpoint, error) {
	host, err := nodefile.NormalizeAddress(opts.Address)
	if err != nil {
		return nil, err
	}
	out := make([]Endpoint, 0, len(ups))
	if opts.Endpoint != "" {
		h, p, err := net.SplitHostPort(opts.Endpoint)
		if err != nil || h == "" {
			return nil, fmt.Errorf("invalid endpoint %q: want host:port", opts.Endpoint)
		}
		if _, err := parsePort(p); err != nil {
			return nil, fmt.Errorf("invalid endpoint %q: %w", opts.Endpoint, err)
		}
		for _, u := range ups {
			out = append(out, Endpoint{Upstream: u.Name, Host: net.JoinHostPort(h, p), TLS: opts.TLS})
		}
		return out, nil
	}
	if host == "" && len(ups) > 0 {
		return nil, errors.New("the cache's address is required (--address)")
	}
	for _, u := range ups {
		hp, err := listenHost(u, host)
		if err != nil {
			return nil, err
		}
		out = append(out, Endpoint{Upstream: u.Name, Host: hp, TLS: opts.TLS || u.TLS.Enabled()})
	}
	return out, nil
}

// listenHost is host with the port u listens on.
func listenHost(u config.Upstream, host string) (string, error) {
	_, p, err := net.SplitHostPort(u.Listen)
	if err != nil {
		return "", fmt.Errorf("upstream %s: listen %q: want host:port or :port", u.Name, u.Listen)
	}
	port, err := parsePort(p)
	if err != nil {
		return "", fmt.Errorf("upstream %s: listen %q: %w", u.Name, u.Listen, err)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

func parsePort(p string) (int, error) {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		// Port 0 is a different random port on every start: nothing a
		// node can be pointed at.
		return 0, fmt.Errorf("port %q: want a fixed port from 1 to 65535", p)
	}
	return int(n), nil
}

// Generate renders the registries.conf drop-in for ups: a [[registry]] per
// upstream (and per alias), each with the cache as its one mirror and the
// real registry as location.
func Generate(ups []config.Upstream, opts Options) ([]byte, error) {
	regs, err := Registries(ups, opts)
	if err != nil {
		return nil, err
	}
	return render(regs)
}

// render writes regs as a drop-in, marked as generated, and reads it back
// with a TOML parser, so a value that would not survive quoting fails here
// and not on a node.
func render(regs []Registry) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# containers-registries.conf(5) drop-in for /etc/containers/registries.conf.d/,\n")
	b.WriteString("# read by CRI-O, Podman, Buildah and skopeo (containers/image). Each registry is\n")
	b.WriteString("# pulled through multiproxy (its mirror), and from location when the cache\n")
	b.WriteString("# cannot be reached. A [[registry]] here replaces the one with the same prefix\n")
	b.WriteString("# in registries.conf and in drop-ins that sort before this file.\n")
	b.WriteString("# multiproxy replaces this file only while it is unedited, or with --force.\n")
	plain := false
	var tls []string
	for _, r := range regs {
		host, _, _ := strings.Cut(r.Mirror, "/")
		if r.MirrorInsecure {
			plain = true
		} else {
			tls = appendNew(tls, host)
		}
	}
	if plain {
		b.WriteString("# Mirrors with insecure = true are listeners of the cache that serve plain HTTP.\n")
	}
	if len(tls) > 0 {
		b.WriteString("# registries.conf has no CA setting: a private CA of the cache goes in\n")
		for _, h := range tls {
			fmt.Fprintf(&b, "#   %s\n", CAPath(h))
		}
	}
	for _, r := range regs {
		if err := r.check(); err != nil {
			return nil, err
		}
		b.WriteString("\n")
		if r.Alias != "" {
			fmt.Fprintf(&b, "# multiproxy upstream %q (remote %s), alias %q\n", r.Upstream, r.Remote, r.Alias)
		} else {
			fmt.Fprintf(&b, "# multiproxy upstream %q (remote %s)\n", r.Upstream, r.Remote)
		}
		b.WriteString("[[registry]]\n")
		b.WriteString("prefix = " + nodefile.TOMLString(r.Prefix) + "\n")
		b.WriteString("location = " + nodefile.TOMLString(r.Location) + "\n")
		if r.Insecure {
			b.WriteString("insecure = true\n")
		}
		b.WriteString("\n[[registry.mirror]]\n")
		b.WriteString("location = " + nodefile.TOMLString(r.Mirror) + "\n")
		if r.MirrorInsecure {
			b.WriteString("insecure = true\n")
		}
		if r.PullFromMirror != "" {
			b.WriteString("pull-from-mirror = " + nodefile.TOMLString(string(r.PullFromMirror)) + "\n")
		}
	}
	body := b.String()
	content := []byte(nodefile.MarkerLine(body) + body)

	back, err := Parse(content)
	if err != nil {
		return nil, fmt.Errorf("generated registries.conf does not parse: %w", err)
	}
	if len(back.Registries) != len(regs) {
		return nil, errors.New("generated registries.conf does not read back as written")
	}
	for i, r := range regs {
		got := back.Registries[i]
		if got.Prefix != r.Prefix || got.Location != r.Location || got.Insecure != r.Insecure || len(got.Mirrors) != 1 ||
			got.Mirrors[0].Location != r.Mirror || got.Mirrors[0].Insecure != r.MirrorInsecure ||
			got.Mirrors[0].PullFromMirror != string(r.PullFromMirror) {
			return nil, fmt.Errorf("generated registries.conf does not read back as written for %s", r.Prefix)
		}
	}
	return content, nil
}

// check makes sure containers/image can use r: the prefix and both
// locations must each parse as the start of an image reference once a
// repository is appended, as containers/image rewrites references.
func (r Registry) check() error {
	for _, f := range [][2]string{{"prefix", r.Prefix}, {"location", r.Location}, {"mirror location", r.Mirror}} {
		if _, err := reference.ParseNormalizedNamed(f[1] + "/library/x"); err != nil {
			return fmt.Errorf("upstream %s: %s %q is not a registry host[:port][/path]: %w", r.Upstream, f[0], f[1], err)
		}
	}
	return nil
}

// File is a registries.conf in containers/image's v2 format, as far as the
// drop-in uses it.
type File struct {
	Registries []FileRegistry `toml:"registry"`
}

// FileRegistry is one [[registry]] table.
type FileRegistry struct {
	Prefix   string       `toml:"prefix"`
	Location string       `toml:"location"`
	Insecure bool         `toml:"insecure"`
	Mirrors  []FileMirror `toml:"mirror"`
}

// FileMirror is one [[registry.mirror]] table.
type FileMirror struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
}

// Parse reads a registries.conf strictly: a key containers/image would not
// know is an error.
func Parse(content []byte) (File, error) {
	var f File
	dec := toml.NewDecoder(strings.NewReader(string(content)))
	dec.DisallowUnknownFields()
	err := dec.Decode(&f)
	return f, err
}

// CAPath is where containers/image looks for the CA of the registry at
// host:port (containers-certs.d(5)).
func CAPath(hostPort string) string {
	return CertsDir + "/" + hostPort + "/ca.crt"
}

func appendNew(ss []string, s string) []string {
	if slices.Contains(ss, s) {
		return ss
	}
	return append(ss, s)
}
