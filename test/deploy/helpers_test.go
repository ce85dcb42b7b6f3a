package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

// Paths of the deployment files, relative to the repository root.
const (
	unitPath       = "deploy/systemd/multiproxy.service"
	userDataPath   = "deploy/cloud-init/user-data.yaml"
	dockerfilePath = "Dockerfile"
	dockerREADME   = "deploy/docker/README.md"
)

// Where user-data installs things on the VM.
const (
	vmUnitPath     = "/etc/systemd/system/multiproxy.service"
	vmConfigPath   = "/etc/multiproxy/multiproxy.yaml"
	vmInstallPath  = "/usr/local/sbin/multiproxy-install"
	vmFirewallPath = "/usr/local/sbin/multiproxy-firewall"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "multiproxy-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the module root: tests run in test/deploy.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found from the test's directory: %v", err)
	}
	return root
}

func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return b
}

var build struct {
	once sync.Once
	path string
	err  error
}

// multiproxyBinary builds cmd/multiproxy once per test run. The binary, not
// the serve package in-process, is what systemd and Docker run, so
// readiness and the healthcheck are tested through it.
func multiproxyBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		out := filepath.Join(binDir, "multiproxy")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/multiproxy")
		cmd.Dir = repoRoot(t)
		if b, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/multiproxy: %v\n%s", err, b)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// shortTempDir is for unix sockets: sun_path holds 108 bytes, and
// t.TempDir() embeds the test's (possibly long) name.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// cleanEnv is the test's environment without MULTIPROXY_* and
// NOTIFY_SOCKET, so a developer's shell cannot change what the binary
// loads or whom it notifies.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MULTIPROXY_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// userData is the part of deploy/cloud-init/user-data.yaml the tests read.
type userData struct {
	Users      []any `yaml:"users"`
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Content     string `yaml:"content"`
		Permissions string `yaml:"permissions"`
	} `yaml:"write_files"`
	Runcmd []any `yaml:"runcmd"`
}

func loadUserData(t *testing.T) (raw []byte, ud userData) {
	t.Helper()
	raw = readRepoFile(t, userDataPath)
	if err := yaml.Unmarshal(raw, &ud); err != nil {
		t.Fatalf("parse %s: %v", userDataPath, err)
	}
	return raw, ud
}

// file returns the content user-data writes to path on the VM.
func (ud userData) file(t *testing.T, path string) string {
	t.Helper()
	for _, f := range ud.WriteFiles {
		if f.Path == path {
			return f.Content
		}
	}
	t.Fatalf("%s writes no %s", userDataPath, path)
	return ""
}

// unitFile is a parsed systemd unit: section -> key -> values in order
// (keys such as ExecReload= may repeat).
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, b []byte) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %d: %q is not Key=Value inside a section", i+1, line)
			}
			if strings.HasSuffix(v, `\`) {
				t.Fatalf("unit line %d: continuation lines are not supported by this parser", i+1)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// one returns the single value of section.key.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Fatalf("unit [%s] %s=: want exactly one value, got %q", section, key, vs)
	}
	return vs[0]
}

// firstDiff describes where a and b first differ, for a readable failure.
func firstDiff(a, b []byte) string {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	line := bytes.Count(a[:i], []byte("\n")) + 1
	excerpt := func(x []byte) string {
		end := min(len(x), i+40)
		return fmt.Sprintf("%q", x[i:end])
	}
	return fmt.Sprintf("first difference at byte %d (line %d): %s vs %s", i, line, excerpt(a), excerpt(b))
}
