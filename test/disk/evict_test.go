package disk

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestEvictionUnderConcurrentPullsKeepsTheWatermark: images adding up to
// five times the disk, pulled by 8 concurrent clients. Every pull succeeds
// verified, the disk never goes below disk.min_free, the oldest images are
// evicted first and the newest stay cached.
func TestEvictionUnderConcurrentPullsKeepsTheWatermark(t *testing.T) {
	const (
		clients   = 8
		layerSize = 4 << 20
		count     = 5 * tmpfsSize / layerSize // 80 images, 320 MiB
	)
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	images := make([]image, count)
	var pushErr atomic.Value
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < count; i = int(next.Add(1) - 1) {
				im, err := tryPushImage(up, fmt.Sprintf("team/app%02d:v1", i), layerSize)
				if err != nil {
					pushErr.CompareAndSwap(nil, err)
					return
				}
				images[i] = im
			}
		})
	}
	wg.Wait()
	if err, _ := pushErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, up, storage, nil)

	free := sampleFree(t, dir)
	c := &http.Client{Timeout: 2 * time.Minute}
	// Images are taken in order, so "least recently pulled" is about
	// "lowest index", give or take the clients pulling side by side.
	next.Store(0)
	errs := make([]error, count)
	for range clients {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < count; i = int(next.Add(1) - 1) {
				errs[i] = ts.PullVerified(c, p.URL("docker.io"), images[i].repo, images[i].tag)
			}
		})
	}
	wg.Wait()
	settle(t, p, storage)
	free.checkWatermark(t)
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull of image %d failed: %v", i, err)
		}
	}

	kept := make([]bool, count)
	var keptList []int
	for i, im := range images {
		kept[i] = manifestStored(storage, im)
		if kept[i] {
			keptList = append(keptList, i)
		}
	}
	t.Logf("images still cached: %v; uncached fills (no_space) %v", keptList, uncached(t, p, "no_space"))
	// The first half is long evicted: 40 images are 160 MiB.
	for i := range count / 2 {
		if kept[i] {
			t.Errorf("image %d of %d (among the least recently pulled) is still cached", i, count)
		}
	}
	// The last four pulled (16 MiB, a quarter of the disk) are cached whole.
	for i := count - 4; i < count; i++ {
		if !kept[i] {
			t.Errorf("image %d of %d, among the last pulled, was evicted", i, count)
			continue
		}
		for _, d := range images[i].blobs() {
			if !blobStored(storage, d) {
				t.Errorf("image %d of %d, among the last pulled, is missing blob %s", i, count, d)
			}
		}
	}
	// Least recently pulled first: nothing evicted was pulled after
	// something kept, beyond the reordering of clients pulling side by
	// side.
	for i := range count {
		for j := i + 2*clients; j < count; j++ {
			if kept[i] && !kept[j] {
				t.Errorf("image %d was evicted while the earlier-pulled image %d is still cached", j, i)
			}
		}
	}
	if len(keptList) == 0 {
		t.Error("nothing is cached after the pulls")
	}
}
