package deploy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// The unit is kept in two places: deploy/systemd for installing by hand,
// and inside user-data, since cloud-init can only write what it carries.
func TestUserDataEmbedsTheUnitVerbatim(t *testing.T) {
	unit := readRepoFile(t, unitPath)
	_, ud := loadUserData(t)
	embedded := []byte(ud.file(t, vmUnitPath))
	if !bytes.Equal(embedded, unit) {
		t.Errorf("%s's copy of %s differs from %s (after YAML decoding): %s\n"+
			"Paste the unit into the write_files entry again, indented to the block.",
			userDataPath, vmUnitPath, unitPath, firstDiff(embedded, unit))
	}
}

func TestUserDataStartsWithCloudConfigHeader(t *testing.T) {
	raw, _ := loadUserData(t)
	// cloud-init ignores user-data that does not start with this line.
	if !bytes.HasPrefix(raw, []byte("#cloud-config\n")) {
		t.Errorf("%s must start with the line #cloud-config", userDataPath)
	}
}

// The config user-data writes must load with the real loader and serve the
// five default upstreams where nodes expect them.
func TestUserDataConfig(t *testing.T) {
	_, ud := loadUserData(t)
	path := filepath.Join(t.TempDir(), "multiproxy.yaml")
	if err := os.WriteFile(path, []byte(ud.file(t, vmConfigPath)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.LoadOptions{File: path, Env: []string{}})
	if err != nil {
		t.Fatalf("%s's %s does not load: %v", userDataPath, vmConfigPath, err)
	}

	want := config.Default()
	if len(cfg.Upstreams) != len(want.Upstreams) {
		t.Fatalf("got %d upstreams, want the %d defaults", len(cfg.Upstreams), len(want.Upstreams))
	}
	for i, u := range cfg.Upstreams {
		w := want.Upstreams[i]
		if u.Name != w.Name || u.Listen != w.Listen || u.Remote != w.Remote {
			t.Errorf("upstreams[%d] = %s %s %s, want the default %s %s %s",
				i, u.Name, u.Listen, u.Remote, w.Name, w.Listen, w.Remote)
		}
	}
	if cfg.DataDir != "/var/lib/multiproxy" {
		t.Errorf("data_dir = %q, want /var/lib/multiproxy (the unit's StateDirectory)", cfg.DataDir)
	}
	// Purge is unauthenticated on loopback; anywhere else it would need a
	// token file that user-data does not write.
	if host, _, _ := net.SplitHostPort(cfg.Admin.Listen); host != "127.0.0.1" {
		t.Errorf("admin.listen = %q, want loopback", cfg.Admin.Listen)
	}

	unit := parseUnit(t, readRepoFile(t, unitPath))
	stop, err := time.ParseDuration(strings.TrimSuffix(unit.one(t, "Service", "TimeoutStopSec"), "ec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if stop <= cfg.ShutdownTimeout {
		t.Errorf("unit TimeoutStopSec=%s does not outlast shutdown_timeout %s: systemd would SIGKILL mid-drain",
			stop, cfg.ShutdownTimeout)
	}
}

// The unit, user-data and the firewall script each name the same things;
// a rename in one place must not leave the others behind.
func TestUnitAgreesWithUserData(t *testing.T) {
	_, ud := loadUserData(t)
	unit := parseUnit(t, readRepoFile(t, unitPath))

	user := unit.one(t, "Service", "User")
	var created bool
	for _, u := range ud.Users {
		m, ok := u.(map[string]any)
		if ok && m["name"] == user && m["system"] == true {
			created = true
		}
	}
	if !created {
		t.Errorf("unit runs as User=%s, but user-data creates no system user of that name", user)
	}

	execStart := strings.Fields(unit.one(t, "Service", "ExecStart"))
	if i := slices.Index(execStart, "--config"); i < 0 || i+1 == len(execStart) || execStart[i+1] != vmConfigPath {
		t.Errorf("ExecStart=%s does not pass --config %s, the file user-data writes", strings.Join(execStart, " "), vmConfigPath)
	}
	if got, want := unit.one(t, "Service", "Environment"), "MULTIPROXY_DATA_DIR=/var/lib/"+unit.one(t, "Service", "StateDirectory"); got != want {
		t.Errorf("Environment=%s, want %s so the cache lands in the StateDirectory", got, want)
	}
	if got := unit.one(t, "Service", "Type"); got != "notify" {
		t.Errorf("Type=%s, want notify", got)
	}
	if caps := unit.one(t, "Service", "CapabilityBoundingSet"); caps != "" {
		t.Errorf("CapabilityBoundingSet=%s, want empty: every port is above 1024", caps)
	}

	var ports []string
	for _, u := range config.Default().Upstreams {
		_, p, _ := net.SplitHostPort(u.Listen)
		ports = append(ports, p)
	}
	if got := shellVar(t, ud.file(t, vmFirewallPath), "PORTS"); got != strings.Join(ports, " ") {
		t.Errorf("firewall script opens PORTS=%q, want the upstream ports %q", got, strings.Join(ports, " "))
	}
}

// shellVar returns the value of a NAME="value" line in a script.
func shellVar(t *testing.T, script, name string) string {
	t.Helper()
	for _, line := range strings.Split(script, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+"="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	t.Fatalf("script sets no %s=", name)
	return ""
}

// writeScript extracts a script user-data installs, to run it here.
func writeScript(t *testing.T, ud userData, vmPath string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), filepath.Base(vmPath))
	if err := os.WriteFile(path, []byte(ud.file(t, vmPath)), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

type scriptResult struct {
	err            error
	stdout, stderr string
}

func runScript(t *testing.T, script string, env []string) scriptResult {
	t.Helper()
	cmd := exec.Command("/bin/sh", script)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return scriptResult{err: err, stdout: out.String(), stderr: errb.String()}
}

// The install script runs for real against a local release server, with
// its target and URL pointed into the test's temp dir through the same
// variables an operator would set.
func TestInstallScript(t *testing.T) {
	if _, err := exec.LookPath("sha256sum"); err != nil {
		t.Skip("sha256sum not installed")
	}
	_, curlErr := exec.LookPath("curl")
	_, wgetErr := exec.LookPath("wget")
	if curlErr != nil && wgetErr != nil {
		t.Skip("neither curl nor wget installed")
	}
	_, ud := loadUserData(t)
	script := writeScript(t, ud, vmInstallPath)

	release := []byte("#!/bin/sh\necho multiproxy release build\n")
	sum := sha256.Sum256(release)
	goodSHA := hex.EncodeToString(sum[:])
	var downloads atomic.Int32
	var gotPath atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads.Add(1)
		gotPath.Store(r.URL.Path)
		w.Write(release)
	}))
	t.Cleanup(srv.Close)

	env := func(bin string, pins ...string) []string {
		return cleanEnv(append([]string{
			"MULTIPROXY_BIN=" + bin,
			"MULTIPROXY_URL=" + srv.URL + "/v9.9.9/multiproxy-linux-@ARCH@",
		}, pins...)...)
	}
	pinned := func(sha string) []string {
		return []string{"MULTIPROXY_VERSION=9.9.9", "MULTIPROXY_SHA256_AMD64=" + sha, "MULTIPROXY_SHA256_ARM64=" + sha}
	}

	t.Run("placeholders and no binary fail", func(t *testing.T) {
		downloads.Store(0)
		bin := filepath.Join(t.TempDir(), "multiproxy")
		res := runScript(t, script, env(bin))
		if res.err == nil || !strings.Contains(res.stderr, "no release pinned") {
			t.Fatalf("got err=%v stderr=%q, want a failure naming the missing pins", res.err, res.stderr)
		}
		if downloads.Load() != 0 {
			t.Error("downloaded without a pin")
		}
	})

	t.Run("placeholders keep a baked binary", func(t *testing.T) {
		downloads.Store(0)
		bin := filepath.Join(t.TempDir(), "multiproxy")
		baked := []byte("#!/bin/sh\necho baked\n")
		if err := os.WriteFile(bin, baked, 0o755); err != nil {
			t.Fatal(err)
		}
		if res := runScript(t, script, env(bin)); res.err != nil {
			t.Fatalf("%v\n%s", res.err, res.stderr)
		}
		if got, _ := os.ReadFile(bin); !bytes.Equal(got, baked) || downloads.Load() != 0 {
			t.Error("a baked binary was replaced or a download attempted without pins")
		}
	})

	t.Run("wrong sha256 installs nothing", func(t *testing.T) {
		downloads.Store(0)
		bin := filepath.Join(t.TempDir(), "multiproxy")
		res := runScript(t, script, env(bin, pinned(strings.Repeat("0", 64))...))
		if res.err == nil || !strings.Contains(res.stderr, "sha256 mismatch") {
			t.Fatalf("got err=%v stderr=%q, want a sha256 mismatch failure", res.err, res.stderr)
		}
		if downloads.Load() != 1 {
			t.Errorf("%d downloads, want 1", downloads.Load())
		}
		if entries, _ := os.ReadDir(filepath.Dir(bin)); len(entries) != 0 {
			t.Errorf("left %v behind after a failed verification", entries)
		}
	})

	t.Run("pinned release is verified and installed", func(t *testing.T) {
		downloads.Store(0)
		bin := filepath.Join(t.TempDir(), "multiproxy")
		res := runScript(t, script, env(bin, pinned(goodSHA)...))
		if res.err != nil {
			t.Fatalf("%v\nstdout: %s\nstderr: %s", res.err, res.stdout, res.stderr)
		}
		got, err := os.ReadFile(bin)
		if err != nil || !bytes.Equal(got, release) {
			t.Fatalf("installed %q (%v), want the release", got, err)
		}
		if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 {
			t.Errorf("mode %v, want 0755", fi.Mode().Perm())
		}
		if p, _ := gotPath.Load().(string); !strings.HasPrefix(p, "/v9.9.9/multiproxy-linux-") || strings.Contains(p, "@ARCH@") {
			t.Errorf("fetched %q, want the URL with @ARCH@ filled in", p)
		}

		// Run again: the installed binary already matches the pin.
		downloads.Store(0)
		if res := runScript(t, script, env(bin, pinned(goodSHA)...)); res.err != nil {
			t.Fatalf("second run: %v\n%s", res.err, res.stderr)
		}
		if downloads.Load() != 0 {
			t.Error("downloaded again although the installed binary matches the pin")
		}
	})
}

// The firewall script runs against stand-in ufw and firewall-cmd commands
// that record their arguments; PATH holds nothing else, so the host's real
// firewall is never touched.
func TestFirewallScript(t *testing.T) {
	_, ud := loadUserData(t)
	script := writeScript(t, ud, vmFirewallPath)
	ports := strings.Fields(shellVar(t, ud.file(t, vmFirewallPath), "PORTS"))

	stub := func(dir, name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The stubs record with the shell's own echo; nothing else is on PATH.
	record := func(log string) string { return `echo "$0 $*" >> ` + strconv.Quote(log) }

	t.Run("no firewall", func(t *testing.T) {
		res := runScript(t, script, []string{"PATH=" + t.TempDir()})
		if res.err != nil || !strings.Contains(res.stdout, "no ufw or firewalld") {
			t.Fatalf("got err=%v stdout=%q, want success saying there is nothing to open", res.err, res.stdout)
		}
	})

	t.Run("ufw", func(t *testing.T) {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls")
		stub(dir, "ufw", record(log))
		if res := runScript(t, script, []string{"PATH=" + dir}); res.err != nil {
			t.Fatalf("%v\n%s", res.err, res.stderr)
		}
		calls, _ := os.ReadFile(log)
		for _, p := range ports {
			if want := fmt.Sprintf("ufw allow %s/tcp comment multiproxy\n", p); !strings.Contains(string(calls), want) {
				t.Errorf("no %q in ufw calls:\n%s", want, calls)
			}
		}
	})

	t.Run("firewalld running", func(t *testing.T) {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls")
		stub(dir, "firewall-cmd", record(log))
		if res := runScript(t, script, []string{"PATH=" + dir}); res.err != nil {
			t.Fatalf("%v\n%s", res.err, res.stderr)
		}
		calls, _ := os.ReadFile(log)
		for _, p := range ports {
			if want := fmt.Sprintf("--permanent --add-port=%s/tcp\n", p); !strings.Contains(string(calls), want) {
				t.Errorf("no %q in firewall-cmd calls:\n%s", want, calls)
			}
		}
		if !strings.HasSuffix(string(calls), "--reload\n") {
			t.Errorf("firewall-cmd calls do not end with --reload:\n%s", calls)
		}
	})

	t.Run("firewalld installed but stopped", func(t *testing.T) {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls")
		// --state fails the way firewall-cmd does when the daemon is down.
		stub(dir, "firewall-cmd", record(log)+"\n[ \"$1\" = --state ] && exit 252\nexit 0")
		stub(dir, "firewall-offline-cmd", record(log))
		if res := runScript(t, script, []string{"PATH=" + dir}); res.err != nil {
			t.Fatalf("%v\n%s", res.err, res.stderr)
		}
		calls, _ := os.ReadFile(log)
		for _, p := range ports {
			if want := fmt.Sprintf("firewall-offline-cmd --add-port=%s/tcp\n", p); !strings.Contains(string(calls), want) {
				t.Errorf("no %q in calls:\n%s", want, calls)
			}
		}
		if strings.Contains(string(calls), "--permanent") {
			t.Errorf("talked to a stopped firewalld:\n%s", calls)
		}
	})
}
