package disk

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestPinnedImageSurvivesWatermarkMaxSizeAndGC: a pinned image and an
// unpinned one are pulled together, then images adding up to the whole
// disk. Eviction for the watermark takes the unpinned one (the least
// recently pulled) and keeps the pinned one; so does a collection by
// max_size. The pinned image then pulls whole with the upstream gone.
func TestPinnedImageSurvivesWatermarkMaxSizeAndGC(t *testing.T) {
	const (
		imageSize = 6 << 20
		fillers   = tmpfsSize / imageSize // 10 images, 60 MiB
		maxSize   = 32 << 20
	)
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	pinned := pushImage(t, up, "team/pinned:v1", imageSize)
	unpinned := pushImage(t, up, "team/unpinned:v1", imageSize)
	var rest []image
	for i := range fillers {
		rest = append(rest, pushImage(t, up, fmt.Sprintf("team/filler%02d:v1", i), imageSize))
	}
	p := startProxy(t, up, storage, func(c *config.Config) {
		c.Upstreams[0].Pins = []string{"team/pinned:v1"}
		c.Upstreams[0].MaxSize = maxSize
	})
	c := &http.Client{Timeout: 2 * time.Minute}
	for _, im := range []image{pinned, unpinned} {
		if err := ts.PullVerified(c, p.URL("docker.io"), im.repo, im.tag); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, p, storage)
	free := sampleFree(t, dir)
	for i, im := range rest {
		if err := ts.PullVerified(c, p.URL("docker.io"), im.repo, im.tag); err != nil {
			t.Fatalf("filler %d: %v", i, err)
		}
		settle(t, p, storage)
	}
	free.checkWatermark(t)
	if manifestStored(storage, unpinned) {
		t.Error("the unpinned image, pulled with the pinned one, survived eviction for the watermark")
	}
	checkWhole(t, storage, pinned, "eviction for the watermark")

	resp, err := http.Post(p.AdminURL()+"/api/v1/gc?upstream=docker.io", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		StoredAfter int64 `json:"stored_bytes_after"`
		PinnedBytes int64 `json:"pinned_bytes"`
		Evicted     []any `json:"evicted"`
	}
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("gc: %d %v", resp.StatusCode, err)
	}
	if res.StoredAfter > maxSize || len(res.Evicted) == 0 {
		t.Errorf("gc left %d bytes stored (max_size %d), evicting %d images", res.StoredAfter, maxSize, len(res.Evicted))
	}
	if res.PinnedBytes < imageSize {
		t.Errorf("gc reports pins hold %d bytes, want the pinned image's %d at least", res.PinnedBytes, imageSize)
	}
	checkWhole(t, storage, pinned, "a collection by max_size")
	if got := p.Metric(t, "multiproxy_pinned_bytes", map[string]string{"upstream": "docker.io"}); int64(got) != res.PinnedBytes {
		t.Errorf("multiproxy_pinned_bytes = %v, gc says %d", got, res.PinnedBytes)
	}

	up.Stop()
	if err := ts.PullVerified(c, p.URL("docker.io"), pinned.repo, pinned.digest); err != nil {
		t.Errorf("the pinned image does not pull with the upstream gone: %v", err)
	}
}

// checkWhole fails unless im's manifest and every blob are stored.
func checkWhole(t *testing.T, storage string, im image, after string) {
	t.Helper()
	if !manifestStored(storage, im) {
		t.Errorf("after %s the pinned image's manifest is gone", after)
	}
	for _, d := range im.blobs() {
		if !blobStored(storage, d) {
			t.Errorf("after %s the pinned image lost blob %s", after, d)
		}
	}
}
