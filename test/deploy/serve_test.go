package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/multiproxy/multiproxy/internal/testsupport"
)

// notifySocket is the datagram socket systemd would own for a Type=notify
// service. Messages arrive on a channel, each datagram as one string.
type notifySocket struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &notifySocket{path: path, msgs: make(chan string, 64)}
	go func() {
		defer close(s.msgs)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.msgs <- string(buf[:n])
		}
	}()
	return s
}

// waitFor returns the first datagram carrying assignment (e.g. READY=1),
// failing the test if exited fires or the wait times out first.
func (s *notifySocket) waitFor(t *testing.T, assignment string, exited <-chan struct{}, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-s.msgs:
			if hasAssignment(m, assignment) {
				return m
			}
		case <-exited:
			// A process that sends its message and exits at once leaves
			// both ready, and select picks either; its datagram may still
			// be on its way to s.msgs. Read what it sent before failing.
			grace := time.After(time.Second)
			for {
				select {
				case m, ok := <-s.msgs:
					if ok && hasAssignment(m, assignment) {
						return m
					}
					if !ok {
						t.Fatalf("multiproxy exited before sending %s", assignment)
					}
				case <-grace:
					t.Fatalf("multiproxy exited before sending %s", assignment)
				}
			}
		case <-deadline:
			t.Fatalf("no %s on NOTIFY_SOCKET within %s (is internal/sdnotify wired into cmd/multiproxy serve?)", assignment, timeout)
		}
	}
}

func hasAssignment(msg, assignment string) bool {
	for _, line := range strings.Split(msg, "\n") {
		if line == assignment {
			return true
		}
	}
	return false
}

// process is the multiproxy binary running under the test.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
	output *bytes.Buffer
}

func startBinary(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(multiproxyBinary(t), args...), exited: make(chan struct{}), output: &bytes.Buffer{}}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("multiproxy output:\n%s", p.output)
		}
	})
	return p
}

type testUpstream struct {
	name, listen string
	reg          *testsupport.Registry
}

func writeConfig(t *testing.T, adminListen string, ups []testUpstream) string {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %s\nshutdown_timeout: 5s\nlog_level: debug\nadmin:\n  listen: %s\nupstreams:\n",
		filepath.Join(dir, "data"), adminListen)
	for _, u := range ups {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n    remote: %s\n", u.name, u.listen, u.reg.URL())
	}
	path := filepath.Join(dir, "multiproxy.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// READY=1 is what lets systemd start whatever depends on the cache, so it
// must mean "every port accepts": the test dials each listener the moment
// the datagram arrives, with no retry.
func TestServeNotifiesReadyOnceListening(t *testing.T) {
	ups := []testUpstream{
		{name: "docker.io", listen: testsupport.FreeAddr(t), reg: testsupport.StartRegistry(t, testsupport.RegistryOptions{})},
		{name: "ghcr.io", listen: testsupport.FreeAddr(t), reg: testsupport.StartRegistry(t, testsupport.RegistryOptions{})},
	}
	adminAddr := testsupport.FreeAddr(t)
	cfgPath := writeConfig(t, adminAddr, ups)
	img := testsupport.PushImage(t, ups[1].reg, "org/app:v1", 2, 4096)

	sock := listenNotify(t)
	p := startBinary(t, cleanEnv("NOTIFY_SOCKET="+sock.path), "serve", "--config", cfgPath)
	sock.waitFor(t, "READY=1", p.exited, 30*time.Second)

	for _, addr := range []string{ups[0].listen, ups[1].listen, adminAddr} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Errorf("READY=1 was sent but %s does not accept connections: %v", addr, err)
			continue
		}
		c.Close()
	}
	if t.Failed() {
		return
	}

	// Ready means serving, not just bound: pull an image through it.
	ref, err := name.ParseReference(ups[1].listen+"/org/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref, testsupport.PullOptions()...)
	if err != nil {
		t.Fatalf("pull through the proxy after READY=1: %v", err)
	}
	testsupport.VerifyImage(t, pulled)
	if testsupport.Digest(t, pulled) != testsupport.Digest(t, img) {
		t.Error("pulled a different image than the upstream holds")
	}

	t.Run("healthcheck", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			env  []string
			args []string
		}{
			{"--admin", cleanEnv(), []string{"healthcheck", "--admin", adminAddr}},
			// What a wildcard admin listener in a container looks like.
			{"--admin wildcard", cleanEnv(), []string{"healthcheck", "--admin", "0.0.0.0:" + port(adminAddr)}},
			{"--config", cleanEnv(), []string{"healthcheck", "--config", cfgPath}},
			// Docker's HEALTHCHECK passes no flags; the config comes from
			// the environment the container was started with.
			{"MULTIPROXY_CONFIG", cleanEnv("MULTIPROXY_CONFIG=" + cfgPath), []string{"healthcheck"}},
		} {
			out, err := runBinary(t, tc.env, tc.args...)
			if err != nil {
				t.Errorf("%s: %v\n%s", tc.name, err, out)
			} else if !strings.Contains(out, "healthy") {
				t.Errorf("%s: output %q does not say healthy", tc.name, out)
			}
		}
	})

	// systemd shows "deactivating" during the drain only if told.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sock.waitFor(t, "STOPPING=1", p.exited, 10*time.Second)
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("exit after SIGTERM: %v, want 0", p.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15s after SIGTERM with shutdown_timeout 5s")
	}
}

// A start that fails must never be reported as ready: systemd would call
// the unit active and order dependants after a proxy that is not there.
func TestServeNotReadyWhenAListenerFails(t *testing.T) {
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	reg := testsupport.StartRegistry(t, testsupport.RegistryOptions{})
	cfgPath := writeConfig(t, testsupport.FreeAddr(t), []testUpstream{
		{name: "docker.io", listen: testsupport.FreeAddr(t), reg: reg},
		{name: "ghcr.io", listen: taken.Addr().String(), reg: reg},
	})

	sock := listenNotify(t)
	p := startBinary(t, cleanEnv("NOTIFY_SOCKET="+sock.path), "serve", "--config", cfgPath)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("serve kept running with one of its ports taken")
	}
	if p.err == nil {
		t.Error("serve exited 0 with one of its ports taken")
	}
	// The process has exited, so anything it sent is already queued.
	for {
		select {
		case m := <-sock.msgs:
			if hasAssignment(m, "READY=1") {
				t.Fatalf("sent READY=1 although %s could not be bound", taken.Addr())
			}
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func TestHealthcheckFailures(t *testing.T) {
	hang := make(chan struct{})
	var hangOnce sync.Once
	release := func() { hangOnce.Do(func() { close(hang) }) }
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(release)
	unhealthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	t.Cleanup(unhealthy.Close)

	badConfig := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("admin:\n  listen: nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Each failure is told by its message; runBinary's bound only catches
	// a healthcheck that never ends (the "no answer" case proves the
	// command's own 3 s timeout fired: its message says so).
	for _, tc := range []struct {
		name    string
		args    []string
		message string
	}{
		{"nothing listening", []string{"--admin", testsupport.FreeAddr(t)}, "connection refused"},
		{"503", []string{"--admin", unhealthy.Listener.Addr().String()}, "503"},
		{"no answer", []string{"--admin", hung.Listener.Addr().String()}, "no answer within 3s"},
		// Docker reserves exit code 2, which a config error would otherwise get.
		{"broken config", []string{"--config", badConfig}, "admin.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runBinary(t, cleanEnv(), append([]string{"healthcheck"}, tc.args...)...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("got %v, want exit status 1\n%s", err, out)
			}
			if !strings.Contains(out, tc.message) {
				t.Errorf("output %q does not mention %q", out, tc.message)
			}
		})
	}
}

func runBinary(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, multiproxyBinary(t), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
