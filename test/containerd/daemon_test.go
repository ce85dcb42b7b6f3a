package containerd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// requireContainerd skips the test when Debian's containerd package is not
// installed. It is the only reason to skip: CI installs it.
func requireContainerd(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: this end-to-end test drives Debian's containerd package (run ci/install-containerd.sh, or apt-get install -y containerd)", bin)
		}
	}
}

// shortDir is a private directory under /tmp. t.TempDir's paths embed the
// test name and can push the socket path past the 108 bytes a unix socket
// address may hold.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "mpctr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// daemon is a containerd process of the test's own.
type daemon struct {
	t    *testing.T
	dir  string
	sock string
	cfg  string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startContainerd runs containerd with a version 2 config.toml holding
// private root, state and socket paths under dir plus registryTOML (the
// CRI registry settings under test).
func startContainerd(t *testing.T, dir, registryTOML string) *daemon {
	t.Helper()
	d := newDaemon(t, dir, "containerd.log")
	d.start(fmt.Sprintf("version = 2\nroot = %q\nstate = %q\n\n[grpc]\n  address = %q\n\n%s",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.sock, registryTOML))
	return d
}

// newDaemon names the paths of a containerd in dir; logName keeps the logs
// of successive daemons in one dir apart.
func newDaemon(t *testing.T, dir, logName string) *daemon {
	return &daemon{
		t:    t,
		dir:  dir,
		sock: filepath.Join(dir, "c.sock"),
		cfg:  filepath.Join(dir, "config.toml"),
		log:  filepath.Join(dir, logName),
		done: make(chan struct{}),
	}
}

// start writes config as the daemon's config.toml, runs containerd and
// waits until it answers on its socket. A CRI plugin that fails to load
// does not stop containerd, so answering is all the readiness there is;
// the log says what loaded.
func (d *daemon) start(config string) {
	t := d.t
	t.Helper()
	if err := os.WriteFile(d.cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("containerd", "--config", d.cfg, "--log-level", "info")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.stop)

	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("containerd exited during startup (%v); it needs root.\n%s", d.cmd.ProcessState, d.logTail())
		default:
		}
		if _, err := d.ctr(5*time.Second, "version"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s within 20 s\n%s", d.sock, d.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.t.Errorf("containerd ignored SIGTERM for 10 s; killing it")
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// ctr runs ctr against this daemon in a namespace of the test's own.
func (d *daemon) ctr(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", d.sock, "--namespace", "multiproxy-e2e"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w after %v", ctx.Err(), timeout)
	}
	return string(out), err
}

// pull has ctr pull and unpack ref, reading registry hosts from hostsDir
// (ctr ignores the CRI config_path). The native snapshotter works in any
// container, unlike overlayfs; the platform is the test images'.
func (d *daemon) pull(ref, hostsDir string) {
	d.t.Helper()
	start := time.Now()
	out, err := d.ctr(60*time.Second, "images", "pull", "--hosts-dir", hostsDir,
		"--snapshotter", "native", "--platform", "linux/amd64", ref)
	if err != nil {
		d.t.Fatalf("ctr images pull %s: %v\n%s\ncontainerd log:\n%s", ref, err, out, d.logTail())
	}
	d.t.Logf("pulled %s in %v", ref, time.Since(start).Round(time.Millisecond))
}

// logLine returns the first log line containing s, or "". Plugins load
// before containerd serves, and it logs unbuffered, so once start returns
// every plugin's outcome is in the log.
func (d *daemon) logLine(s string) string {
	b, err := os.ReadFile(d.log)
	if err != nil {
		d.t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// criConfig is the config.toml part for the CRI plugin under test: hosts
// from hostsDir (the kubelet's pulls read config_path; ctr needs
// --hosts-dir), and the native snapshotter, which works in any container,
// unlike the default overlayfs.
func criConfig(hostsDir string) string {
	return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q
`, hostsDir)
}

// fromContainerd reports whether a User-Agent is containerd's (ctr's and
// the CRI plugin's alike).
func fromContainerd(userAgent string) bool { return strings.HasPrefix(userAgent, "containerd/") }

// direct counts the requests containerd sent itself to a registry.
func direct(a *ts.AgentLog) int {
	n := 0
	for _, r := range a.Requests() {
		if fromContainerd(r.UserAgent) {
			n++
		}
	}
	return n
}

// servedBytes sums multiproxy_served_bytes_total for one upstream over
// every source (cache, upstream) from the proxy's /metrics.
func servedBytes(t *testing.T, adminURL, upstream string) float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape metrics: %s", resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		labels, ok := strings.CutPrefix(line, "multiproxy_served_bytes_total{")
		if !ok || !strings.Contains(labels, `upstream="`+upstream+`"`) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil && !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Fatalf("read metrics: %v", err)
	}
	return sum
}
