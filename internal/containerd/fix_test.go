package containerd

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestFixCorpusPassesCheck migrates every corpus config, installs the result
// and its hosts.toml set in a scratch node root, and checks it again: no
// errors, no warnings. Migrating the result once more changes nothing.
func TestFixCorpusPassesCheck(t *testing.T) {
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".toml") {
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			orig := readFile(t, filepath.Join("testdata", e.Name()))
			res, err := Fix(orig, FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
			if err != nil {
				t.Fatalf("Fix: %v", err)
			}
			r := installAndCheck(t, res)
			if n := r.Count(Error) + r.Count(Warning); n > 0 {
				t.Errorf("fixed config still has %d problems:\n%s\n--- fixed config.toml:\n%s", n, reportText(t, r), res.Config)
			}
			assertKept(t, orig, res.Config)

			again, err := Fix(res.Config, FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
			if err != nil {
				t.Fatalf("Fix of the fixed file: %v", err)
			}
			if again.Changed {
				t.Errorf("fixing the fixed file changed it again:\n%s", again.Config)
			}
		})
	}
}

// installAndCheck writes a fix into a fresh node root and checks it there.
func installAndCheck(t *testing.T, res *FixResult) *Report {
	t.Helper()
	root := t.TempDir()
	cfg := filepath.Join(root, "etc/containerd/config.toml")
	writeFile(t, cfg, string(res.Config))
	if _, err := WriteHosts(filepath.Join(root, res.CertsDir), res.Hosts, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return checkFile(t, cfg, CheckOptions{Upstreams: testUpstreams, Root: root})
}

// assertKept checks that every line of the original that is not registry
// mirror or TLS configuration survives, in order: the fix must not lose a
// user's other settings or comments.
func assertKept(t *testing.T, orig, fixed []byte) {
	t.Helper()
	out := splitLines(fixed)
	i := 0
	for _, l := range splitLines(orig) {
		s := strings.TrimSpace(l)
		if s == "" || strings.Contains(s, "mirrors") || strings.HasPrefix(s, "endpoint") || strings.Contains(s, ".tls]") ||
			strings.HasPrefix(s, "ca_file") || strings.HasPrefix(s, "insecure_skip_verify") ||
			strings.HasPrefix(s, "config_path") || strings.Contains(s, "plugins.'io.containerd.grpc.v1.cri'.registry") ||
			strings.HasPrefix(s, "# DEPRECATED") {
			continue
		}
		for i < len(out) && out[i] != l {
			i++
		}
		if i == len(out) {
			t.Errorf("line %q of the original is missing from the fixed file:\n%s", l, fixed)
			return
		}
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The 1.6 default config with a mirror added (with or without config_path)
// comes back as the 1.6 default with config_path set: only the mirror
// lines go, layout and every other key stay byte for byte.
func TestFixIsMinimalEdit(t *testing.T) {
	want := strings.Replace(string(readFile(t, "testdata/v16-config-path.toml")),
		"      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n\n", "", 1)
	for _, file := range []string{"v16-mirrors-and-config-path.toml", "v16-mirrors-only.toml"} {
		t.Run(file, func(t *testing.T) {
			res, err := Fix(readFile(t, filepath.Join("testdata", file)), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
			if err != nil {
				t.Fatal(err)
			}
			if string(res.Config) != want {
				t.Errorf("fixed config differs from the 1.6 default with config_path:\n%s", res.Config)
			}
			wantNotes := []string{`replaced mirrors."docker.io" (http://10.0.20.10:5000) with multiproxy's hosts.toml`}
			if !slices.Equal(res.Notes, wantNotes) {
				t.Errorf("notes %q, want %q", res.Notes, wantNotes)
			}
		})
	}
}

// Debian ships a config.toml without any registry table: the fix adds one
// among the CRI plugin's tables, indented like its neighbours.
func TestFixDebianStock(t *testing.T) {
	res, err := Fix(readFile(t, "testdata/debian-stock.toml"), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`
	if string(res.Config) != want {
		t.Errorf("fixed Debian config:\n%s\nwant:\n%s", res.Config, want)
	}
}

// Mirrors of registries multiproxy does not serve are not lost: each
// becomes a hosts.toml of its own, and a legacy mirror that named the
// registry itself over plain http becomes its server.
func TestFixMigratesForeignMirrors(t *testing.T) {
	res, err := Fix(readFile(t, "testdata/v1-mirrors.toml"), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10", Version: V16}})
	if err != nil {
		t.Fatal(err)
	}
	var internal *HostsFile
	for i := range res.Hosts {
		if res.Hosts[i].Registry == "registry.internal:5000" {
			internal = &res.Hosts[i]
		}
	}
	if internal == nil {
		t.Fatalf("no hosts.toml for registry.internal:5000 among %d files; notes %q", len(res.Hosts), res.Notes)
	}
	got := hostsOf(t, internal.Content)
	if got.Server != "http://registry.internal:5000" || !slices.Equal(got.hosts, []string{"http://registry.internal:5000"}) {
		t.Errorf("registry.internal:5000 hosts.toml: server %q hosts %q\n%s", got.Server, got.hosts, internal.Content)
	}
}

func TestFixMovesTLSIntoHostsFile(t *testing.T) {
	res, err := Fix(readFile(t, "testdata/v16-tls-and-config-path.toml"), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	last := res.Hosts[len(res.Hosts)-1]
	if last.Registry != "registry.internal:5443" {
		t.Fatalf("last hosts file is for %s", last.Registry)
	}
	for _, want := range []string{`server = "https://registry.internal:5443"`, `ca = "/etc/ssl/internal-ca.pem"`, `[host."https://registry.internal:5443"]`} {
		if !strings.Contains(string(last.Content), want) {
			t.Errorf("hosts.toml lacks %q:\n%s", want, last.Content)
		}
	}
	// The auth table may stay: containerd allows it with config_path.
	if !strings.Contains(string(res.Config), `registry.configs."registry.internal:5443".auth]`) {
		t.Errorf("the auth table was dropped:\n%s", res.Config)
	}
}

// A version 3 file that kept the 1.x table name gets the table renamed, in
// the file's own quoting style.
func TestFixRenamesPluginTable(t *testing.T) {
	res, err := Fix(readFile(t, "testdata/v3-old-plugin-name.toml"), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(res.Config), "  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '/etc/containerd/certs.d'\n") {
		t.Errorf("registry table not renamed:\n%s", res.Config)
	}
	// The hosts files follow the config's version: 2.x reads dial_timeout.
	if !strings.Contains(string(res.Hosts[0].Content), `dial_timeout = "1s"`) {
		t.Errorf("hosts.toml for a version 3 config lacks dial_timeout:\n%s", res.Hosts[0].Content)
	}
}

func TestFixMissingConfig(t *testing.T) {
	res, err := Fix(nil, FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	r := installAndCheck(t, res)
	if n := r.Count(Error) + r.Count(Warning); n > 0 {
		t.Errorf("config written for a node without one has problems:\n%s", reportText(t, r))
	}
}

// When the registry settings sit inside the plugin table itself, a rename
// cannot move them; Fix must say so rather than write a file containerd
// would still ignore.
func TestFixRefusesWhatItCannotMove(t *testing.T) {
	in := "version = 3\n[plugins.'io.containerd.grpc.v1.cri']\n  registry.config_path = '/etc/containerd/certs.d'\n"
	_, err := Fix([]byte(in), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err == nil || !strings.Contains(err.Error(), "by hand") {
		t.Fatalf("Fix = %v, want a refusal that says to edit by hand", err)
	}
}

func TestFixInlineMirrors(t *testing.T) {
	in := "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n  mirrors = { \"docker.io\" = { endpoint = [\"http://10.0.20.10:5000\"] } }\n  # keep me\n"
	res, err := Fix([]byte(in), FixOptions{Upstreams: testUpstreams, Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n  # keep me\n"
	if string(res.Config) != want {
		t.Errorf("got:\n%s\nwant:\n%s", res.Config, want)
	}
}

// A legacy endpoint with credentials in its URL is not copied into a
// world-readable hosts.toml, and the password is printed nowhere.
func TestFixDropsCredentialedEndpoint(t *testing.T) {
	in := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"r.example\"]\n  endpoint = [\"https://puller:s3cret@mirror.example\", \"https://mirror2.example\"]\n"
	res, err := Fix([]byte(in), FixOptions{Hosts: HostsOptions{Address: "10.0.20.10"}})
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(res.Notes, "\n")
	for _, f := range res.Hosts {
		all += string(f.Content)
	}
	if strings.Contains(all, "s3cret") {
		t.Errorf("the password leaked:\n%s", all)
	}
	if len(res.Hosts) != 1 || !strings.Contains(string(res.Hosts[0].Content), `[host."https://mirror2.example"]`) {
		t.Errorf("hosts files %+v, want r.example with the other mirror", res.Hosts)
	}
	if !strings.Contains(all, "https://puller:xxxxx@mirror.example of mirrors.\"r.example\": credentials") {
		t.Errorf("notes do not say why the endpoint was dropped:\n%s", all)
	}
}
