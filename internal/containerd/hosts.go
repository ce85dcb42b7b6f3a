package containerd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// DefaultCertsDir is where config_path conventionally points, and where
// `containerd hosts` writes unless told otherwise.
const DefaultCertsDir = "/etc/containerd/certs.d"

// DefaultDialTimeout bounds the TCP connect to the cache on containerd
// versions that honour dial_timeout. A cache on the node's network answers
// a SYN in milliseconds; without it a cache host that has vanished costs
// containerd's built-in 30 s per request before it falls back to server.
const DefaultDialTimeout = time.Second

// HostsOptions says where the generated hosts.toml files send pulls.
type HostsOptions struct {
	// Address is the cache's host name or IP as nodes reach it. Each
	// upstream's mirror is Address plus the port of that upstream's listen
	// address.
	Address string
	// Endpoint, when set, is one host:port that every registry's mirror
	// points at instead (one-port mode, routed by containerd's ?ns=).
	Endpoint string
	// Version is the containerd release line the files are for; it decides
	// whether dial_timeout is written. Empty means DefaultVersion.
	Version Version
	// DialTimeout is written as dial_timeout where Version supports it;
	// 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// EndpointTLS says the one-port Endpoint serves HTTPS (the top-level
	// tls). Per-port mirrors follow each upstream's own tls setting.
	EndpointTLS bool
	// CAFile, when set, is where nodes keep the CA that signed the cache's
	// certificate; it is written as the mirror's ca. Without it the
	// node's system roots must trust the certificate.
	CAFile string
	// Reader, when set, names who reads the files in their first comment
	// instead of "containerd <Version>" (dockerd, which embeds
	// containerd's resolver, reads them from /etc/docker/certs.d).
	Reader string
}

// HostsFile is one generated <registry>/hosts.toml.
type HostsFile struct {
	// Registry is the registry host as image references spell it
	// (docker.io, ghcr.io, 10.0.0.5:5000); it names the directory.
	Registry string
	Content  []byte
}

// Path is where the file belongs under a certs.d directory.
func (f HostsFile) Path(dir string) string {
	return filepath.Join(dir, f.Registry, "hosts.toml")
}

// hostsSpec is the content of one hosts.toml before rendering.
type hostsSpec struct {
	registry string
	// origin says in the file where it came from, for whoever reads it on
	// a node months later.
	origin string
	server string
	// mirrors are tried in order before server.
	mirrors     []string
	version     Version
	dialTimeout time.Duration
	// reader names who reads the file; empty: containerd <version>.
	reader string
	// serverTLS and mirrorTLS carry registry.configs.<host>.tls settings
	// migrated from config.toml, for server and for mirrors by URL.
	serverTLS *tlsSettings
	mirrorTLS map[string]*tlsSettings
}

type tlsSettings struct {
	caFile     string
	certFile   string
	keyFile    string
	skipVerify bool
}

// GenerateHosts renders one hosts.toml per upstream, in the upstreams'
// order. Each keeps the upstream's real registry as server, so containerd
// falls back to a direct pull whenever the cache cannot be reached.
func GenerateHosts(ups []config.Upstream, opts HostsOptions) ([]HostsFile, error) {
	specs, err := upstreamSpecs(ups, opts)
	if err != nil {
		return nil, err
	}
	return renderAll(specs)
}

func upstreamSpecs(ups []config.Upstream, opts HostsOptions) ([]hostsSpec, error) {
	version := opts.Version
	if version == "" {
		version = DefaultVersion
	}
	if _, err := ParseVersion(string(version)); err != nil {
		return nil, err
	}
	if opts.Endpoint == "" && opts.Address == "" && len(ups) > 0 {
		return nil, errors.New("the cache's address is required (--address)")
	}
	host, err := nodefile.NormalizeAddress(opts.Address)
	if err != nil {
		return nil, err
	}
	specs := make([]hostsSpec, 0, len(ups))
	for _, u := range ups {
		mirror, err := mirrorURL(u, host, opts.Endpoint, opts.EndpointTLS)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		var mirrorTLS map[string]*tlsSettings
		if strings.HasPrefix(mirror, "https://") && opts.CAFile != "" {
			mirrorTLS = map[string]*tlsSettings{mirror: {caFile: opts.CAFile}}
		}
		specs = append(specs, hostsSpec{
			mirrorTLS:   mirrorTLS,
			registry:    u.Name,
			origin:      fmt.Sprintf("multiproxy upstream %q", u.Name),
			server:      u.Remote,
			mirrors:     []string{mirror},
			version:     version,
			dialTimeout: opts.DialTimeout,
			reader:      opts.Reader,
		})
	}
	return specs, nil
}

func renderAll(specs []hostsSpec) ([]HostsFile, error) {
	files := make([]HostsFile, 0, len(specs))
	for _, s := range specs {
		content, err := s.render()
		if err != nil {
			return nil, fmt.Errorf("hosts.toml for %s: %w", s.registry, err)
		}
		files = append(files, HostsFile{Registry: s.registry, Content: content})
	}
	return files, nil
}

// LoopbackOnly lists the upstreams whose listen address is a loopback IP
// while address is not: nodes would be pointed at a port they cannot reach,
// and every pull would wait for the fallback.
func LoopbackOnly(ups []config.Upstream, address string) []string {
	if ip := net.ParseIP(strings.Trim(address, "[]")); (ip != nil && ip.IsLoopback()) || address == "localhost" {
		return nil
	}
	var out []string
	for _, u := range ups {
		h, _, err := net.SplitHostPort(u.Listen)
		if ip := net.ParseIP(h); err == nil && (h == "localhost" || ip != nil && ip.IsLoopback()) {
			out = append(out, u.Name)
		}
	}
	return out
}

// mirrorURL is the cache's URL for upstream u: the one-port endpoint, or
// host plus the port u listens on; https where that listener serves TLS.
func mirrorURL(u config.Upstream, host, endpoint string, endpointTLS bool) (string, error) {
	if endpoint != "" {
		scheme := "http://"
		if endpointTLS {
			scheme = "https://"
		}
		h, p, err := net.SplitHostPort(endpoint)
		if err != nil || h == "" {
			return "", fmt.Errorf("invalid endpoint %q: want host:port", endpoint)
		}
		if _, err := parsePort(p); err != nil {
			return "", fmt.Errorf("invalid endpoint %q: %w", endpoint, err)
		}
		return scheme + net.JoinHostPort(h, p), nil
	}
	scheme := "http://"
	if u.TLS.Enabled() {
		scheme = "https://"
	}
	_, p, err := net.SplitHostPort(u.Listen)
	if err != nil {
		return "", fmt.Errorf("listen %q: want host:port or :port", u.Listen)
	}
	port, err := parsePort(p)
	if err != nil {
		return "", fmt.Errorf("listen %q: %w", u.Listen, err)
	}
	return scheme + net.JoinHostPort(host, strconv.Itoa(port)), nil
}

func parsePort(p string) (int, error) {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		// Port 0 would be a different random port on every start; nothing
		// a node can be pointed at.
		return 0, fmt.Errorf("port %q: want a fixed port from 1 to 65535", p)
	}
	return int(n), nil
}

// render writes the file and reads it back with a TOML parser, so a value
// that would not survive quoting fails here and not on a node.
func (s hostsSpec) render() ([]byte, error) {
	if !nodefile.ValidRegistryName(s.registry) {
		return nil, fmt.Errorf("registry %q is not a host name with optional :port", s.registry)
	}
	if s.server != "" {
		if err := checkURL(s.server); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	for _, m := range s.mirrors {
		if err := checkURL(m); err != nil {
			return nil, fmt.Errorf("mirror: %w", err)
		}
	}
	dial := ""
	if s.version.SupportsDialTimeout() {
		d := s.dialTimeout
		if d <= 0 {
			d = DefaultDialTimeout
		}
		dial = d.String()
	}

	var b strings.Builder
	reader := s.reader
	if reader == "" {
		reader = "containerd " + string(s.version)
	}
	fmt.Fprintf(&b, "# Source: %s, for %s.\n", s.origin, reader)
	b.WriteString("# multiproxy replaces this file only while it is unedited, or with --force.\n")
	if len(s.mirrors) > 0 && dial == "" {
		fmt.Fprintf(&b, "# No dial_timeout: containerd %s ignores it (2.1+, or 2.0.x with the backport).\n", s.version)
	}
	if s.server != "" {
		b.WriteString("server = " + nodefile.TOMLString(s.server) + "\n")
	}
	s.serverTLS.write(&b, "")
	if len(s.mirrors) == 0 && s.server != "" {
		// containerd 1.6 rejects a hosts.toml without [host] tables
		// ("invalid `host` tree") and ignores the whole file, server and
		// TLS settings included; repeating server as a host avoids that.
		b.WriteString("\n# server again as a host: containerd 1.6 ignores a file without [host] tables.\n")
		b.WriteString("[host." + nodefile.TOMLString(s.server) + "]\n")
		b.WriteString("  capabilities = [\"pull\", \"resolve\"]\n")
		s.serverTLS.write(&b, "  ")
	}
	for _, m := range s.mirrors {
		b.WriteString("\n[host." + nodefile.TOMLString(m) + "]\n")
		b.WriteString("  capabilities = [\"pull\", \"resolve\"]\n")
		if dial != "" {
			b.WriteString("  dial_timeout = " + nodefile.TOMLString(dial) + "\n")
		}
		s.mirrorTLS[m].write(&b, "  ")
	}
	body := b.String()
	content := []byte(nodefile.MarkerLine(body) + body)

	var back struct {
		Server string                    `toml:"server"`
		Host   map[string]map[string]any `toml:"host"`
	}
	if err := toml.Unmarshal(content, &back); err != nil {
		return nil, fmt.Errorf("generated hosts.toml does not parse: %w", err)
	}
	wantHosts := len(s.mirrors)
	if wantHosts == 0 && s.server != "" {
		wantHosts = 1
	}
	if back.Server != s.server || len(back.Host) != wantHosts {
		return nil, errors.New("generated hosts.toml does not read back as written")
	}
	return content, nil
}

// write renders TLS settings as hosts.toml keys; nil writes nothing.
func (t *tlsSettings) write(b *strings.Builder, indent string) {
	if t == nil {
		return
	}
	if t.caFile != "" {
		b.WriteString(indent + "ca = " + nodefile.TOMLString(t.caFile) + "\n")
	}
	switch {
	case t.certFile != "" && t.keyFile != "":
		b.WriteString(indent + "client = [[" + nodefile.TOMLString(t.certFile) + ", " + nodefile.TOMLString(t.keyFile) + "]]\n")
	case t.certFile != "":
		b.WriteString(indent + "client = " + nodefile.TOMLString(t.certFile) + "\n")
	}
	if t.skipVerify {
		b.WriteString(indent + "skip_verify = true\n")
	}
}

// checkURL accepts the http(s) base URLs hosts.toml needs. Credentials in
// a URL would be written to a world-readable file, so they are refused.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		// *url.Error repeats the input, credentials and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("invalid URL: %w", err)
	}
	switch {
	case u.User != nil:
		return fmt.Errorf("%s: URL must not carry credentials", u.Redacted())
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: want an http:// or https:// URL", raw)
	case u.Host == "":
		return fmt.Errorf("%q has no host", raw)
	}
	return nil
}

// redactURLs joins URLs for a message, with any password masked.
func redactURLs(urls []string) string {
	out := make([]string, len(urls))
	for i, raw := range urls {
		out[i] = raw
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			out[i] = u.Redacted()
		} else if err != nil && strings.Contains(raw, "@") {
			out[i] = "(an unparsable URL)"
		}
	}
	return strings.Join(out, ", ")
}

// hostDirectory is containerd's alternative directory name for a registry
// with a port: "host:5000" may also live in "host_5000_", which containerd
// looks at first (remotes/docker/config/hosts.go, hostDirectory).
func hostDirectory(registry string) string {
	if i := strings.LastIndex(registry, ":"); i > 0 {
		return registry[:i] + "_" + registry[i+1:] + "_"
	}
	return registry
}
