package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/serve"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// childConfigEnv makes the test binary act as a multiproxy server process,
// so a test can kill -9 a real process without building the binary.
const childConfigEnv = "MULTIPROXY_TEST_CHILD_CONFIG"

func TestMain(m *testing.M) {
	if file := os.Getenv(childConfigEnv); file != "" {
		cfg, err := config.Load(config.LoadOptions{File: file})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		if err := serve.Run(context.Background(), cfg, log, serve.Hooks{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startChild(t *testing.T, cfgFile, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childConfigEnv+"="+cfgFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("child multiproxy did not listen on %s", addr)
	return nil
}

func TestKillDuringFillLeavesNothingServable(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/big:1", 1, 8<<20)
	layer := ts.LayerDigests(t, img)[0]
	// Slow enough that the kill lands mid-fill.
	remove := f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: ts.Throttle(2 << 20)})

	dir := t.TempDir()
	addr := freeAddr(t)
	cfgFile := filepath.Join(dir, "multiproxy.yaml")
	yaml := fmt.Sprintf(`data_dir: %s
admin:
  listen: %s
upstreams:
  - name: docker.io
    listen: %q
    remote: %s
    timeout: 2s
`, filepath.Join(dir, "data"), freeAddr(t), addr, up.URL())
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	child := startChild(t, cfgFile, addr)
	resp, err := http.Get("http://" + addr + "/v2/library/big/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512<<10)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatalf("no first bytes: %v", err)
	}
	if err := child.Process.Kill(); err != nil { // SIGKILL: no cleanup runs
		t.Fatal(err)
	}
	_ = child.Wait()
	resp.Body.Close()

	hexd := layer[len("sha256:"):]
	data := filepath.Join(dir, "data", "docker.io", "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
	if _, err := os.Stat(data); err == nil {
		t.Fatal("a killed fill left a committed blob")
	}

	remove()
	startChild(t, cfgFile, addr)
	r := fetchBlob("http://" + addr + "/v2/library/big/blobs/" + layer)
	if r.err != nil || r.digest != layer {
		t.Fatalf("after restart: %v, digest %s want %s", r.err, r.digest, layer)
	}
}
