package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestSIGHUPReloadKeepsPullsGoing: a pull loop runs on docker.io while a
// SIGHUP reload removes ghcr.io, adds quay.io and changes docker.io's
// timeout. The loop sees no failure, quay.io serves, ghcr.io is gone; then
// an invalid config is rejected with a log line and everything keeps
// serving. docker.io behaves like Docker Hub: bearer tokens, and blobs
// redirected to a CDN.
func TestSIGHUPReloadKeepsPullsGoing(t *testing.T) {
	faults := ts.NewFaults()
	hub := ts.StartRegistry(t, ts.RegistryOptions{Token: true, CDN: true, WrapCDN: faults.Wrap})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	quay := ts.StartRegistry(t, ts.RegistryOptions{})
	var hubLayers []string
	for i := range 6 {
		img := ts.PushImage(t, hub, fmt.Sprintf("library/app%d:1", i), 1, 512<<10)
		hubLayers = append(hubLayers, ts.LayerDigests(t, img)...)
	}
	// Cold blobs arrive slowly, so fills are in flight when the reload lands.
	faults.Add(ts.Rule{Method: "GET", PathContains: "/blobs/", Action: ts.Throttle(4 << 20)})
	ts.PushImage(t, ghcr, "org/tool:1", 1, 1024)
	quayImg := ts.PushImage(t, quay, "org/new:1", 1, 1024)

	dir := t.TempDir()
	hubAddr, ghcrAddr, quayAddr := ts.FreeAddr(t), ts.FreeAddr(t), ts.FreeAddr(t)
	cfgFile := filepath.Join(dir, "multiproxy.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	head := fmt.Sprintf("data_dir: %s\nadmin:\n  listen: %s\nupstreams:\n", filepath.Join(dir, "data"), ts.FreeAddr(t))
	hubEntry := func(timeout string) string {
		return fmt.Sprintf("  - {name: docker.io, listen: %q, remote: %q, timeout: %s}\n", hubAddr, hub.URL(), timeout)
	}
	write(head + hubEntry("5s") + fmt.Sprintf("  - {name: ghcr.io, listen: %q, remote: %q}\n", ghcrAddr, ghcr.URL()))

	sock := listenNotify(t)
	logs := &ts.SyncBuffer{}
	cmd := exec.Command(multiproxyBinary(t), "serve", "--config", cfgFile)
	cmd.Env = cleanEnv("NOTIFY_SOCKET=" + sock.path)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	sock.waitFor(t, "READY=1", exited, 30*time.Second)

	var pulls, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	c := &http.Client{Timeout: 30 * time.Second}
	for w := range 4 {
		wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := hubLayers[i%len(hubLayers)]
				repo := fmt.Sprintf("library/app%d", i%len(hubLayers))
				pulls.Add(1)
				if err := fetch(c, "http://"+hubAddr+"/v2/"+repo+"/blobs/"+d, d); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)

	write(head + hubEntry("7s") + fmt.Sprintf("  - {name: quay.io, listen: %q, remote: %q}\n", quayAddr, quay.URL()))
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sock.waitFor(t, "RELOADING=1", exited, 10*time.Second)
	sock.waitFor(t, "READY=1", exited, 30*time.Second)
	// The server's stderr reaches the test through a pipe, a little after
	// the notifications.
	waitLogged(t, logs, "config reloaded")
	resp, err := getManifest(c, "http://"+quayAddr+"/v2/org/new/manifests/1")
	if err != nil {
		t.Fatalf("added upstream quay.io: %v", err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != ts.Digest(t, quayImg) {
		t.Fatalf("added upstream quay.io: %d %s", resp.StatusCode, got)
	}
	waitClosed(t, ghcrAddr)

	// An invalid config is refused; the running one stays.
	write(head + "  - {name: docker.io, listen: 'not an address', remote: 'ftp://x'}\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sock.waitFor(t, "READY=1", exited, 30*time.Second)
	waitLogged(t, logs, "config reload rejected")
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d pulls on docker.io failed across the reloads; first: %v", n, pulls.Load(), firstErr.Load())
	}
	if pulls.Load() < 8 {
		t.Fatalf("only %d pulls ran", pulls.Load())
	}
	resp, err = getManifest(c, "http://"+quayAddr+"/v2/org/new/manifests/1")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("quay.io after the rejected reload: %v", err)
	}
	resp.Body.Close()
	t.Logf("%d pulls on docker.io, 0 failed, across a reload and a rejected reload", pulls.Load())
}

// waitLogged waits until the server's log has line, which an operator
// reads to know what became of a reload.
func waitLogged(t *testing.T, logs *ts.SyncBuffer, line string) {
	t.Helper()
	ts.WaitUntil(t, 10*time.Second, "the log line "+strconv.Quote(line), func() (bool, string) {
		l := logs.String()
		return strings.Contains(l, line), "\n" + l
	})
}

// getManifest asks for an OCI manifest the way container clients do.
func getManifest(c *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	return c.Do(req)
}

func fetch(c *http.Client, url, want string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", url, resp.StatusCode)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s: digest %s", url, got)
	}
	return nil
}

// waitClosed waits until nothing accepts connections on addr.
func waitClosed(t *testing.T, addr string) {
	t.Helper()
	ts.WaitFor(t, 15*time.Second, "the removed upstream's listener "+addr+" closed", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}
