package disk

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// removeAll deletes a directory tree the cache may be writing into
// meanwhile, retrying until it is gone.
func removeAll(t *testing.T, dir string) {
	t.Helper()
	ts.WaitFor(t, 30*time.Second, "rm -rf "+dir, func() bool {
		err := os.RemoveAll(dir)
		return err == nil
	})
}

// TestStoreRemovedWhilePulling: an operator (or a failed disk replaced
// under a running process) removes the upstream's whole storage directory
// while pulls run. Every pull keeps succeeding, verified; afterwards a
// fresh uncached blob is stored again, in directories the cache recreated.
func TestStoreRemovedWhilePulling(t *testing.T) {
	t.Parallel()
	const workers = 4
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	var images []image
	for i := range 2 * workers {
		images = append(images, pushImage(t, up, fmt.Sprintf("team/app%d:1", i), 1<<20, 256<<10))
	}
	// One fill is held mid-spool until the store has gone, so that at
	// least one fill certainly loses its spool; the rest are slow, so
	// that others are being spooled too.
	hold := make(chan struct{})
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + images[0].layers[0], Times: 1, Action: ts.HoldBody(256<<10, hold)})
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/", Action: ts.Throttle(8 << 20)})
	p := startProxy(t, up, storage, nil)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: 2 * time.Minute}

	// The held fill starts first, alone, so the spool the test waits for
	// is certainly its own.
	held := make(chan error, 1)
	go func() {
		held <- ts.PullVerifiedBlob(c, base, images[0].repo, images[0].layers[0])
	}()
	ts.WaitFor(t, 60*time.Second, "the held fill being spooled", func() bool { return len(spoolFiles(storage)) > 0 })

	var pulls, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			// Each worker pulls only its own images: a client joining
			// another's fill is TestJoinerOfFillWhoseStoreWasRemoved.
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				im := images[w+workers*(i%2)]
				if i%3 == 2 {
					// By digest too, which the App serves from the store.
					err := ts.PullVerified(c, base, im.repo, im.digest)
					if err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
				} else if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				pulls.Add(1)
			}
		})
	}
	// Remove it twice: once while a fill is being spooled, then again once
	// images are cached.
	removeAll(t, storage)
	close(hold)
	if err := <-held; err != nil {
		t.Errorf("the client of the fill whose spool was removed: %v", err)
	}
	before := pulls.Load()
	ts.WaitFor(t, 60*time.Second, "pulls after the removal", func() bool { return pulls.Load() >= before+2*workers })
	removeAll(t, storage)
	before = pulls.Load()
	ts.WaitFor(t, 60*time.Second, "pulls after the second removal", func() bool { return pulls.Load() >= before+2*workers })
	close(stop)
	wg.Wait()
	t.Logf("%d pulls, %d failed", pulls.Load(), failures.Load())
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d pulls failed around the storage removal; first: %v", n, pulls.Load(), firstErr.Load())
	}

	// The fill whose spool vanished could not be committed, and says so.
	if n := p.Metric(t, "multiproxy_storage_errors_total", map[string]string{"upstream": "docker.io", "op": "commit"}); n < 1 {
		t.Errorf("multiproxy_storage_errors_total{op=commit} = %v after a running fill's spool was removed, want at least 1", n)
	}

	// A fresh image is stored again.
	fresh := pushImage(t, up, "team/fresh:1", 1<<20)
	if err := ts.PullVerified(c, base, fresh.repo, fresh.tag); err != nil {
		t.Fatalf("fresh pull after the removal: %v", err)
	}
	ts.WaitFor(t, 30*time.Second, "the fresh image is stored in the recreated store", func() bool {
		for _, d := range fresh.blobs() {
			if !blobStored(storage, d) {
				return false
			}
		}
		return manifestStored(storage, fresh)
	})
	for _, d := range fresh.blobs() {
		if got, err := hashFile(blobPath(storage, d)); err != nil || got != d {
			t.Errorf("stored blob %s hashes to %s (%v)", d, got, err)
		}
	}
	f.ResetCounts()
	if err := ts.PullVerified(c, base, fresh.repo, fresh.digest); err != nil {
		t.Fatal(err)
	}
	if n := f.Count("GET", "/blobs/"); n != 0 {
		t.Errorf("the re-stored image still went upstream for %d blobs", n)
	}
	settle(t, p, storage) // no spool file is left behind either
}

// TestJoinerOfFillWhoseStoreWasRemoved: a client asking for a blob whose
// fill is running joins it. If the store was removed meanwhile, the
// spool file is gone from its directory but the fill still has every
// byte: the joiner must get the blob, not an error.
func TestJoinerOfFillWhoseStoreWasRemoved(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	im := pushImage(t, up, "library/app:1", 8<<20)
	layer := im.layers[0]
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: ts.Throttle(4 << 20)})
	p := startProxy(t, up, storage, nil)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: 2 * time.Minute}

	first := startPull(c, base, im.repo, layer)
	ts.WaitFor(t, 60*time.Second, "the first client's first MiB", func() bool { return first.read.n.Load() >= 1<<20 })
	if len(spoolFiles(storage)) == 0 {
		t.Fatal("no spool file while the fill runs")
	}
	removeAll(t, storage)
	if err := fetchBlob(c, base, im.repo, layer); err != nil {
		t.Errorf("client joining the running fill after the store was removed: %v", err)
	}
	if err := first.wait(t, 2*time.Minute); err != nil {
		t.Errorf("the client whose fill was running when the store was removed: %v", err)
	}
	if n := f.Count("GET", "/blobs/"+layer); n != 1 {
		t.Logf("%d upstream GETs of the layer", n)
	}
}

// TestManifestRemovedWhileTagRevalidates: a pull by tag of a cached image
// checks the store, asks the upstream whether the tag moved, then serves
// the stored manifest. If the store is removed while the upstream answers,
// the image still exists upstream: the client must get it, not a 404.
func TestManifestRemovedWhileTagRevalidates(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	im := pushImage(t, up, "library/app:1", 64<<10)
	p := startProxy(t, up, storage, nil)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: time.Minute}
	if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
		t.Fatal(err)
	}
	settle(t, p, storage)
	if !manifestStored(storage, im) {
		t.Fatal("the manifest was not stored")
	}

	// Hold the revalidation upstream until the store is gone.
	f.ResetCounts()
	release := make(chan struct{})
	f.Add(ts.Rule{Method: "HEAD", PathContains: "/manifests/", Times: 1, Action: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		select {
		case <-release:
			next.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	}})
	type answer struct {
		status int
		digest string
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		status, d, err := getManifest(c, base, im.repo, im.tag)
		done <- answer{status, d, err}
	}()
	ts.WaitFor(t, 30*time.Second, "the tag's revalidation reaches the upstream", func() bool { return f.Count("HEAD", "/manifests/") > 0 })
	removeAll(t, storage)
	close(release)
	a := <-done
	if a.status != http.StatusOK || a.err != nil || a.digest != im.digest {
		t.Errorf("pull by tag whose stored manifest was removed during revalidation: %d %v, digest %q, want 200 %s", a.status, a.err, a.digest, im.digest)
	}
	// The next pull finds the manifest gone and fetches it again.
	if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
		t.Errorf("the pull after: %v", err)
	}
}
