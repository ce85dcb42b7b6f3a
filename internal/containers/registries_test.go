package containers

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// table is the built-in default's first two upstreams plus a private
// registry with a port, reached over plain HTTP.
func table() []config.Upstream {
	return []config.Upstream{
		{Name: "docker.io", Listen: ":5000", Remote: "https://registry-1.docker.io"},
		{Name: "ghcr.io", Listen: ":5010", Remote: "https://ghcr.io"},
		{Name: "registry.corp:5000", Listen: "10.0.20.10:5020", Remote: "http://registry.corp:5000"},
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// entry is what one [[registry]] must read back as.
type entry struct {
	prefix, location string
	insecure         bool
	mirror           string
	mirrorInsecure   bool
	pull             string
}

func requireEntries(t *testing.T, content []byte, want ...entry) {
	t.Helper()
	f, err := Parse(content)
	if err != nil {
		t.Fatalf("the output does not parse as a v2 registries.conf: %v\n%s", err, content)
	}
	if len(f.Registries) != len(want) {
		t.Fatalf("%d [[registry]] tables, want %d:\n%s", len(f.Registries), len(want), content)
	}
	for i, w := range want {
		r := f.Registries[i]
		got := entry{prefix: r.Prefix, location: r.Location, insecure: r.Insecure}
		if len(r.Mirrors) != 1 {
			t.Errorf("registry %s has %d mirrors, want 1", r.Prefix, len(r.Mirrors))
			continue
		}
		got.mirror, got.mirrorInsecure, got.pull = r.Mirrors[0].Location, r.Mirrors[0].Insecure, r.Mirrors[0].PullFromMirror
		if got != w {
			t.Errorf("registry %d reads back as %+v, want %+v", i, got, w)
		}
	}
	if !GeneratedUnedited(content) {
		t.Error("the output does not carry a valid generated-by marker")
	}
}

func TestPerPort(t *testing.T) {
	out, err := Generate(table(), Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "per-port.conf", out)
	requireEntries(t, out,
		// Docker Hub's API host is written as docker.io, which containers/image
		// dials as registry-1.docker.io.
		entry{"docker.io", "docker.io", false, "10.0.20.10:5000", true, ""},
		entry{"ghcr.io", "ghcr.io", false, "10.0.20.10:5010", true, ""},
		// A plain-HTTP remote is an insecure location; the listen host is
		// replaced by the address nodes reach the cache at.
		entry{"registry.corp:5000", "registry.corp:5000", true, "10.0.20.10:5020", true, ""},
	)
}

func TestOnePort(t *testing.T) {
	ups := table()
	for i := range ups {
		ups[i].Listen = ""
	}
	ups[2].Aliases = []string{"corp"}
	out, err := Generate(ups, Options{Address: "cache.example.com", Endpoint: "cache.example.com:5000"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "one-port.conf", out)
	requireEntries(t, out,
		entry{"docker.io", "docker.io", false, "cache.example.com:5000/docker.io", true, ""},
		entry{"ghcr.io", "ghcr.io", false, "cache.example.com:5000/ghcr.io", true, ""},
		// A name with a port cannot be a path component: the alias is
		// the path, and no prefix of its own (it names no registry host).
		entry{"registry.corp:5000", "registry.corp:5000", true, "cache.example.com:5000/corp", true, ""},
	)

	ups[2].Aliases = nil
	_, err = Generate(ups, Options{Address: "cache.example.com", Endpoint: "cache.example.com:5000"})
	if err == nil || !strings.Contains(err.Error(), "add an alias without a port") {
		t.Errorf("one-port mode with a name that cannot be a path: err %v, want advice to add an alias", err)
	}
}

// Aliases are further prefixes sent to the same mirror and location;
// index.docker.io is written as docker.io, the name containers/image
// normalizes Docker Hub references to.
func TestAliases(t *testing.T) {
	ups := table()[:2]
	ups[0].Name = "index.docker.io"
	ups[0].Aliases = []string{"docker.io", "registry-1.docker.io"}
	ups[1].Aliases = []string{"ghcr.example.com", "ghcr.io"}
	out, err := Generate(ups, Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "aliases.conf", out)
	requireEntries(t, out,
		entry{"docker.io", "docker.io", false, "10.0.20.10:5000", true, ""},
		entry{"registry-1.docker.io", "docker.io", false, "10.0.20.10:5000", true, ""},
		entry{"ghcr.io", "ghcr.io", false, "10.0.20.10:5010", true, ""},
		entry{"ghcr.example.com", "ghcr.io", false, "10.0.20.10:5010", true, ""},
	)

	ups[1].Aliases = []string{"docker.io"}
	if _, err := Generate(ups, Options{Address: "10.0.20.10"}); err == nil || !strings.Contains(err.Error(), "already upstream") {
		t.Errorf("an alias naming another upstream's prefix: err %v", err)
	}
}

func TestPullFromMirror(t *testing.T) {
	out, err := Generate(table()[:2], Options{Address: "10.0.20.10", PullFromMirror: MirrorDigestOnly})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "pull-from-mirror.conf", out)
	requireEntries(t, out,
		entry{"docker.io", "docker.io", false, "10.0.20.10:5000", true, "digest-only"},
		entry{"ghcr.io", "ghcr.io", false, "10.0.20.10:5010", true, "digest-only"},
	)
	if _, err := Generate(table(), Options{Address: "h", PullFromMirror: "some"}); err == nil {
		t.Error("pull-from-mirror \"some\" accepted")
	}
	for _, s := range []string{"", "all", "digest-only", "tag-only"} {
		if _, err := ParsePullFromMirror(s); err != nil {
			t.Errorf("ParsePullFromMirror(%q): %v", s, err)
		}
	}
}

// With TLS the mirrors lose insecure (the location's own stays: it is
// the registry's), and the file says where a private CA goes. An upstream
// with a certificate of its own is reached over TLS in per-port mode.
func TestTLS(t *testing.T) {
	out, err := Generate(table(), Options{Address: "10.0.20.10", TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "tls.conf", out)
	requireEntries(t, out,
		entry{"docker.io", "docker.io", false, "10.0.20.10:5000", false, ""},
		entry{"ghcr.io", "ghcr.io", false, "10.0.20.10:5010", false, ""},
		entry{"registry.corp:5000", "registry.corp:5000", true, "10.0.20.10:5020", false, ""},
	)
	for _, ca := range []string{"/etc/containers/certs.d/10.0.20.10:5000/ca.crt", "/etc/containers/certs.d/10.0.20.10:5020/ca.crt"} {
		if !strings.Contains(string(out), "#   "+ca+"\n") {
			t.Errorf("the TLS file does not name %s", ca)
		}
	}

	ups := table()
	ups[1].TLS = config.TLS{CertFile: "c.pem", KeyFile: "k.pem"}
	out, err = Generate(ups, Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	requireEntries(t, out,
		entry{"docker.io", "docker.io", false, "10.0.20.10:5000", true, ""},
		entry{"ghcr.io", "ghcr.io", false, "10.0.20.10:5010", false, ""},
		entry{"registry.corp:5000", "registry.corp:5000", true, "10.0.20.10:5020", true, ""},
	)
}

func TestRemoteLocation(t *testing.T) {
	for remote, want := range map[string]string{
		"https://registry-1.docker.io":     "docker.io",
		"https://index.docker.io:443/":     "docker.io",
		"https://quay.io:443":              "quay.io",
		"https://registry.k8s.io":          "registry.k8s.io",
		"http://127.0.0.1:34567":           "127.0.0.1:34567",
		"https://registry-1.docker.io:444": "registry-1.docker.io:444",
	} {
		got, _, err := remoteLocation(remote)
		if err != nil || got != want {
			t.Errorf("remoteLocation(%q) = %q, %v; want %q", remote, got, err, want)
		}
	}
	if _, _, err := remoteLocation("https://user:secret@example.com"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("a remote with credentials: err %v", err)
	}
}

func TestInvalid(t *testing.T) {
	for name, tc := range map[string]struct {
		ups  []config.Upstream
		opts Options
	}{
		"no address":         {table(), Options{}},
		"address with port":  {table(), Options{Address: "10.0.20.10:5000"}},
		"address with path":  {table(), Options{Address: "cache/x"}},
		"listen port 0":      {[]config.Upstream{{Name: "ghcr.io", Listen: ":0", Remote: "https://ghcr.io"}}, Options{Address: "h"}},
		"bad endpoint":       {table(), Options{Address: "h", Endpoint: "h"}},
		"name of a hub repo": {[]config.Upstream{{Name: "hub", Listen: ":5000", Remote: "https://registry-1.docker.io"}}, Options{Address: "h"}},
	} {
		if out, err := Generate(tc.ups, tc.opts); err == nil {
			t.Errorf("%s: accepted:\n%s", name, out)
		}
	}
}

// IPv6 addresses are bracketed in the mirror location.
func TestIPv6Address(t *testing.T) {
	out, err := Generate(table()[:1], Options{Address: "fd00::10"})
	if err != nil {
		t.Fatal(err)
	}
	requireEntries(t, out, entry{"docker.io", "docker.io", false, "[fd00::10]:5000", true, ""})
}
