package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
)

var testUpstreams = []config.Upstream{
	{Name: "docker.io", Listen: ":5000", Remote: "https://registry-1.docker.io"},
	{Name: "ghcr.io", Listen: ":5010", Remote: "https://ghcr.io"},
}

// nodeRoot is a directory standing in for a node's /, with multiproxy's
// hosts.toml files already in /etc/containerd/certs.d, so that a case shows
// only what is wrong with its config.toml.
func nodeRoot(t *testing.T, version Version) string {
	t.Helper()
	root := t.TempDir()
	files, err := GenerateHosts(testUpstreams, HostsOptions{Address: "10.0.20.10", Version: version})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteHosts(filepath.Join(root, DefaultCertsDir), files, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return root
}

type wantFinding struct {
	sev  Severity
	code string
	line int
}

func (w wantFinding) String() string { return fmt.Sprintf("%s %s line %d", w.sev, w.code, w.line) }

func summary(fs []Finding) []wantFinding {
	out := make([]wantFinding, 0, len(fs))
	for _, f := range fs {
		out = append(out, wantFinding{f.Severity, f.Code, f.Line})
	}
	return out
}

func checkFile(t *testing.T, path string, opts CheckOptions) *Report {
	t.Helper()
	r, err := Check(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Check(%s): %v", path, err)
	}
	return r
}

// TestCheckCorpus runs the checker over real-shaped configs: containerd
// 1.6's own `config default` output with and without mirrors, the seeds'
// wildcard mirror, 1.7 and 2.x defaults, Debian's packaged file and an
// old version 1 file.
func TestCheckCorpus(t *testing.T) {
	cases := []struct {
		file    string
		version Version // the node's containerd, when the case depends on it
		want    []wantFinding
	}{
		{file: "v16-config-path.toml", want: []wantFinding{{Info, CodeConfigVersion, 9}}},
		{file: "v16-mirrors-only.toml", want: []wantFinding{
			{Info, CodeConfigVersion, 9},
			{Warning, CodeDeprecatedMirrors, 155},
		}},
		{file: "v16-mirrors-and-config-path.toml", want: []wantFinding{
			{Info, CodeConfigVersion, 9},
			{Error, CodeMirrorsWithPath, 155},
		}},
		{file: "v16-tls-and-config-path.toml", want: []wantFinding{
			{Info, CodeConfigVersion, 1},
			{Error, CodeTLSWithPath, 6},
		}},
		{file: "seeds-wildcard.toml", want: []wantFinding{
			{Info, CodeConfigVersion, 2},
			{Warning, CodeDeprecatedMirrors, 21},
			{Error, CodeWildcardMirror, 21},
		}},
		{file: "v17-config-path.toml", version: V17, want: []wantFinding{{Info, CodeConfigVersion, 10}}},
		{file: "v3-config-path.toml", version: V2, want: []wantFinding{{Info, CodeConfigVersion, 2}}},
		// The same 2.x file on a 1.x node: 1.6.20 starts with it but never
		// reads its registry table.
		{file: "v3-config-path.toml", version: V16, want: []wantFinding{{Error, CodeConfigVersion, 2}}},
		{file: "v3-old-plugin-name.toml", want: []wantFinding{
			{Warning, CodeNoConfigPath, 0},
			{Info, CodeConfigVersion, 2},
			{Error, CodePluginMismatch, 8},
		}},
		{file: "v1-mirrors.toml", want: []wantFinding{
			{Info, CodeConfigVersion, 0},
			{Warning, CodeDeprecatedMirrors, 15},
		}},
		{file: "debian-stock.toml", want: []wantFinding{
			{Warning, CodeNoConfigPath, 0},
			{Info, CodeConfigVersion, 1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file+"/"+string(tc.version), func(t *testing.T) {
			root := nodeRoot(t, cmpVersion(tc.version))
			path, _ := filepath.Abs(filepath.Join("testdata", tc.file))
			r := checkFile(t, path, CheckOptions{Upstreams: testUpstreams, Version: tc.version, Root: root})
			got := summary(r.Findings)
			if !slices.Equal(got, tc.want) {
				t.Errorf("findings:\n got %v\nwant %v\n%s", got, tc.want, reportText(t, r))
			}
			for _, f := range r.Findings {
				if f.Line > 0 && f.Text == "" {
					t.Errorf("%s at line %d does not quote the line", f.Code, f.Line)
				}
				if f.Severity > Info && f.Fix == "" {
					t.Errorf("%s says nothing about how to fix it", f.Code)
				}
			}
		})
	}
}

func cmpVersion(v Version) Version {
	if v == "" {
		return DefaultVersion
	}
	return v
}

func reportText(t *testing.T, r *Report) string {
	t.Helper()
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The error a user sees must carry containerd's own words, so a search for
// the line in containerd's log finds this finding, and quote the line to
// delete.
func TestCheckMirrorsWithConfigPathQuotesContainerd(t *testing.T) {
	r := checkFile(t, "testdata/v16-mirrors-and-config-path.toml", CheckOptions{Root: nodeRoot(t, V16)})
	text := reportText(t, r)
	for _, want := range []string{
		"testdata/v16-mirrors-and-config-path.toml:155: error [mirrors-with-config-path]",
		`155 | [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]`,
		"invalid plugin config: `mirrors` cannot be set when `config_path` is provided",
		"fix: delete every registry.mirrors table",
		"1 error, 0 warnings, 1 note",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
}

func TestCheckMissingConfigFile(t *testing.T) {
	r := checkFile(t, filepath.Join(t.TempDir(), "config.toml"), CheckOptions{})
	if got := summary(r.Findings); !slices.Equal(got, []wantFinding{{Warning, CodeNoConfig, 0}}) {
		t.Errorf("findings %v, want the no-config warning", got)
	}
}

func TestCheckInvalidTOML(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	writeFile(t, path, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry\nconfig_path = \"x\"\n")
	r := checkFile(t, path, CheckOptions{})
	if got := summary(r.Findings); !slices.Equal(got, []wantFinding{{Error, CodeInvalidTOML, 2}}) {
		t.Errorf("findings %v, want invalid-toml at line 2", got)
	}
}

// TestCheckCertsDir covers the certs.d side: upstreams without a file, a
// file pointing at a port multiproxy no longer uses, a file containerd
// cannot decode, a "host_port_" directory shadowing ours, and a _default
// catch-all aimed at a single upstream's port.
func TestCheckCertsDir(t *testing.T) {
	root := t.TempDir()
	certs := filepath.Join(root, "certs.d")
	ups := []config.Upstream{
		{Name: "docker.io", Listen: ":5000", Remote: "https://registry-1.docker.io"},
		{Name: "ghcr.io", Listen: ":5010", Remote: "https://ghcr.io"},
		{Name: "quay.io", Listen: ":5020", Remote: "https://quay.io"},
		{Name: "10.1.2.3:6000", Listen: ":5030", Remote: "http://10.1.2.3:6000"},
		{Name: "registry.k8s.io", Listen: ":5040", Remote: "https://registry.k8s.io"},
	}
	files, err := GenerateHosts(ups[:1], HostsOptions{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteHosts(certs, files, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	// ghcr.io: written for an older config where it listened on :6010.
	writeFile(t, filepath.Join(certs, "ghcr.io", "hosts.toml"),
		"server = \"https://ghcr.io\"\n[host.\"http://10.0.20.10:6010\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	// quay.io: broken TOML, which containerd drops with only a log line.
	writeFile(t, filepath.Join(certs, "quay.io", "hosts.toml"), "server = \"https://quay.io\n")
	// 10.1.2.3:6000 has both spellings; containerd reads the _port_ one.
	writeFile(t, filepath.Join(certs, "10.1.2.3_6000_", "hosts.toml"),
		"server = \"http://10.1.2.3:6000\"\n[host.\"http://10.0.20.10:5030\"]\n")
	writeFile(t, filepath.Join(certs, "10.1.2.3:6000", "hosts.toml"),
		"server = \"http://10.1.2.3:6000\"\n[host.\"http://10.0.20.10:5030\"]\n")
	// _default: every other registry to the Docker Hub port.
	writeFile(t, filepath.Join(certs, "_default", "hosts.toml"),
		"[host.\"http://10.0.20.10:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n")

	cfg := filepath.Join(root, "config.toml")
	writeFile(t, cfg, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \""+certs+"\"\n")
	r := checkFile(t, cfg, CheckOptions{Upstreams: ups})

	type fileFinding struct {
		code, file string
		sev        Severity
	}
	var got []fileFinding
	for _, f := range r.Findings {
		rel, _ := filepath.Rel(root, f.File)
		got = append(got, fileFinding{f.Code, rel, f.Severity})
	}
	want := []fileFinding{
		{CodeConfigVersion, "config.toml", Info},
		// registry.k8s.io has no directory: _default catches it.
		{CodeMissingHosts, "config.toml", Warning},
		{CodeShadowedHosts, "certs.d/10.1.2.3_6000_/hosts.toml", Warning},
		{CodeDefaultMirror, "certs.d/_default/hosts.toml", Warning},
		{CodeStaleHosts, "certs.d/ghcr.io/hosts.toml", Warning},
		{CodeInvalidHosts, "certs.d/quay.io/hosts.toml", Error},
	}
	if !slices.Equal(got, want) {
		t.Errorf("findings:\n got %v\nwant %v\n%s", got, want, reportText(t, r))
	}
	text := reportText(t, r)
	for _, s := range []string{
		"containerd uses " + filepath.Join(certs, "_default") + " for it",
		"no mirror on port 5010, where multiproxy serves ghcr.io: pulls go to http://10.0.20.10:6010",
		`containerd logs "failed to decode hosts.toml" and ignores the file`,
	} {
		if !strings.Contains(text, s) {
			t.Errorf("report lacks %q:\n%s", s, text)
		}
	}
}

func TestCheckNoCertsDir(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	writeFile(t, cfg, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \""+filepath.Join(dir, "nope")+"\"\n")
	r := checkFile(t, cfg, CheckOptions{Upstreams: testUpstreams[:1]})
	want := []wantFinding{{Info, CodeConfigVersion, 1}, {Warning, CodeCertsDirMissing, 3}, {Warning, CodeMissingHosts, 3}}
	if got := summary(r.Findings); !slices.Equal(got, want) {
		t.Errorf("findings %v, want %v", got, want)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A finding may quote a line with a credential on it; the value is never
// printed.
func TestCheckRedactsCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	writeFile(t, path, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r.io\".auth]\n  password = \"hunter2\n")
	text := reportText(t, checkFile(t, path, CheckOptions{}))
	if strings.Contains(text, "hunter2") {
		t.Errorf("report prints the password:\n%s", text)
	}
	if !strings.Contains(text, "password = <redacted>") {
		t.Errorf("report does not show the redacted line:\n%s", text)
	}
}
