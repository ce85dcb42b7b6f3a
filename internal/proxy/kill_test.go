package proxy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func TestMain(m *testing.M) {
	// A test kills -9 this binary started as a multiproxy server.
	ts.RunChildIfAsked()
	os.Exit(m.Run())
}

func TestKillDuringFillLeavesNothingServable(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/big:1", 1, 2<<20)
	layer := ts.LayerDigests(t, img)[0]
	// The upstream holds the rest of the body after 512 KiB: the kill
	// lands mid-fill. The child's death ends the held request.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	remove := f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: ts.HoldBody(512<<10, release)})

	dir := t.TempDir()
	addr := ts.FreeAddr(t)
	cfgFile := filepath.Join(dir, "multiproxy.yaml")
	yaml := fmt.Sprintf(`data_dir: %s
admin:
  listen: %s
upstreams:
  - name: docker.io
    listen: %q
    remote: %s
    timeout: 2s
`, filepath.Join(dir, "data"), ts.FreeAddr(t), addr, up.URL())
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	child := ts.StartChild(t, cfgFile, addr)
	resp, err := blobClient.Get("http://" + addr + "/v2/library/big/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512<<10)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatalf("no first bytes: %v", err)
	}
	child.Kill(t) // SIGKILL: no cleanup runs
	resp.Body.Close()

	hexd := layer[len("sha256:"):]
	data := filepath.Join(dir, "data", "docker.io", "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
	if _, err := os.Stat(data); err == nil {
		t.Fatal("a killed fill left a committed blob")
	}

	remove()
	restarted := ts.StartChild(t, cfgFile, addr)
	r := fetchBlob("http://"+addr+"/v2/library/big/blobs/"+layer, nil)
	if r.err != nil || r.digest != layer {
		t.Fatalf("after restart: %v, digest %s want %s\nchild log:\n%s", r.err, r.digest, layer, restarted.Logs())
	}
}
