package disk

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	dsk "github.com/multiproxy/multiproxy/internal/disk"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// leaveFree writes a file next to the store (not the cache's) until about
// free bytes are left on the filesystem.
func leaveFree(t *testing.T, dir string, free int64) {
	t.Helper()
	u, err := dsk.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Free < free {
		t.Fatalf("only %d bytes free, want to leave %d", u.Free, free)
	}
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, u.Free-free), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestChunkedBlobKeepsTheWatermark: an upstream that sends a 50 MiB layer
// without Content-Length, to a disk with 30 MiB free. The fill cannot know
// it will not fit: it spools, claiming space step by step, and when the
// next step would cross the watermark it passes the rest through. Both
// clients get every byte, verified, among them one that lags in the spool
// when the fill switches; the disk never goes below the watermark; the
// layer is not stored, and the spooled bytes are given back.
func TestChunkedBlobKeepsTheWatermark(t *testing.T) {
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	im := pushImage(t, up, "library/chunked:1", 50<<20)
	layer := im.layers[0]
	p := startProxy(t, up, storage, nil)
	base := p.URL("docker.io")
	f.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer, Action: ts.DropHeader("Content-Length")})
	leaveFree(t, dir, 30<<20)
	before, err := dsk.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	free := sampleFree(t, dir)
	c := &http.Client{Timeout: 5 * time.Minute}

	eager := startPull(c, base, im.repo, layer)
	ts.WaitFor(t, time.Minute, "the first client's first MiB", func() bool { return eager.read.n.Load() >= 1<<20 })
	// The second client joins the same fill, reads its first MiB and stops
	// until the fill has switched: it is then still in the spool, and
	// the window may not run further ahead of it than its size.
	goOn := make(chan struct{})
	lagging := startGatedPull(c, base, im.repo, layer, 1<<20, goOn)
	ts.WaitFor(t, time.Minute, "the lagging client's first MiB", func() bool { return lagging.read.n.Load() >= 1<<20 })
	ts.WaitFor(t, 2*time.Minute, "the fill switched to pass-through", func() bool { return uncached(t, p, "no_space") == 1 })
	close(goOn)
	for name, pull := range map[string]*slowPull{"first": eager, "lagging": lagging} {
		if err := pull.wait(t, 5*time.Minute); err != nil {
			t.Errorf("the %s client: %v", name, err)
		}
	}
	lowest := free.Stop()
	settle(t, p, storage)
	free.checkWatermark(t)
	// The fill spooled before it switched: the free space went down by
	// more than one step.
	if spooled := before.Free - lowest; spooled < 16<<20 {
		t.Errorf("free space went down by %d bytes only: the fill did not spool before passing through", spooled)
	}
	if blobStored(storage, layer) {
		t.Error("the 50 MiB layer was stored on a disk with 30 MiB free")
	}
	if n := f.Count("GET", "/blobs/"+layer); n != 1 {
		t.Errorf("%d upstream GETs of the layer, want 1: both clients share one fill", n)
	}
	after, err := dsk.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The spool is removed and nothing else was stored but a few KiB of
	// links: the space comes back.
	if after.Free < before.Free-1<<20 {
		t.Errorf("%d bytes free after the pull, %d before: the discarded spool still takes space", after.Free, before.Free)
	}
	t.Logf("free: %d MiB before, %.1f MiB lowest, %d MiB after; watermark %d MiB",
		before.Free>>20, float64(lowest)/(1<<20), after.Free>>20, watermark>>20)
}
