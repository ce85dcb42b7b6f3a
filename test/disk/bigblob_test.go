package disk

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestBlobLargerThanTheDiskPassesThrough: an 80 MiB layer on a 64 MiB disk
// can never be stored. It must still pull, verified, every time; the disk
// must never fill (nothing is spooled), and the operator sees why in
// multiproxy_fill_uncached_total{reason="no_space"}.
func TestBlobLargerThanTheDiskPassesThrough(t *testing.T) {
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	huge := pushImage(t, up, "library/huge:1", 80<<20)
	layer := huge.layers[0]
	p := startProxy(t, up, storage, nil)
	c := &http.Client{Timeout: 5 * time.Minute}

	free := sampleFree(t, dir)
	for pull := 1; pull <= 2; pull++ {
		f.ResetCounts()
		if err := ts.PullVerified(c, p.URL("docker.io"), huge.repo, huge.tag); err != nil {
			t.Fatalf("pull %d: %v", pull, err)
		}
		settle(t, p, storage)
		if blobStored(storage, layer) {
			t.Fatalf("pull %d: the 80 MiB layer was stored on a 64 MiB disk", pull)
		}
		if n := uncached(t, p, "no_space"); n != float64(pull) {
			t.Errorf("after pull %d: multiproxy_fill_uncached_total{reason=no_space} = %v, want %d", pull, n, pull)
		}
		if n := f.Count("GET", "/blobs/"+layer); n != 1 {
			t.Errorf("pull %d: %d upstream GETs of the layer, want 1 (it is not cached)", pull, n)
		}
	}
	free.checkWatermark(t)
	if n := uncached(t, p, "storage_error"); n != 0 {
		t.Errorf("multiproxy_fill_uncached_total{reason=storage_error} = %v, want 0: a blob too big to store is no storage error", n)
	}
}

// TestBlobLargerThanTheDiskEvictsNothing: evicting cannot make room for a
// blob larger than the whole disk, so it must not evict what is cached: an
// operator would see one oversized pull empty the cache for nothing.
func TestBlobLargerThanTheDiskEvictsNothing(t *testing.T) {
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	small := pushImage(t, up, "library/small:1", 1<<20)
	huge := pushImage(t, up, "library/huge:1", 80<<20)
	p := startProxy(t, up, storage, nil)
	c := &http.Client{Timeout: 5 * time.Minute}

	if err := ts.PullVerified(c, p.URL("docker.io"), small.repo, small.tag); err != nil {
		t.Fatal(err)
	}
	settle(t, p, storage)
	if err := ts.PullVerified(c, p.URL("docker.io"), huge.repo, huge.tag); err != nil {
		t.Fatal(err)
	}
	settle(t, p, storage)
	if n := uncached(t, p, "no_space"); n != 1 {
		t.Errorf("multiproxy_fill_uncached_total{reason=no_space} = %v, want 1", n)
	}
	if !manifestStored(storage, small) {
		t.Errorf("the cached image %s:%s was evicted to make room for an 80 MiB blob that can never fit on a 64 MiB disk", small.repo, small.tag)
	}
	for _, d := range small.blobs() {
		if !blobStored(storage, d) {
			t.Errorf("blob %s of the cached image was evicted for a blob that can never fit", d)
		}
	}
}
