package ha

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestRedirectSendsWarmBlobsFromTheBucket: with storage.s3.redirect a
// replica without a local copy answers a blob GET with a presigned 307 to
// the bucket, which a client follows to the right bytes; the replica's own
// bandwidth stays out of the path.
func TestRedirectSendsWarmBlobsFromTheBucket(t *testing.T) {
	up := tokenCDN(t)
	img := up.Push(t, "team/app:v1", 2, 1<<20)
	c := startCluster(t, up, 2, options{storage: "    redirect: true\n"})
	if err := pullAll(c.replicas[0], "team/app:v1"); err != nil {
		t.Fatal(err)
	}
	layer := ts.LayerDigests(t, img)[0]
	// The filling replica's client has its last byte before the upload to
	// the bucket completes; until then another replica streams the fill.
	for _, d := range ts.BlobDigests(t, img) {
		ts.WaitFor(t, 20*time.Second, "the blob lands in the bucket", func() bool {
			return len(c.s3.Objects(t, blobKey(d))) > 0
		})
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get("http://" + c.replicas[1].listen + "/v2/team/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, c.s3.Endpoint+"/") || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("GET of a blob in the bucket = %s, Location %q; want 307 to a presigned %s URL", resp.Status, loc, c.s3.Endpoint)
	}
	up.CDN.ResetCounts()
	if err := pullAll(c.replicas[1], "team/app:v1"); err != nil {
		t.Fatalf("pull through the redirect: %v", err)
	}
	if n := up.CDN.Count(http.MethodGet, ""); n != 0 {
		t.Errorf("the upstream's CDN got %d GETs for blobs the bucket holds", n)
	}
	// The replica that filled keeps serving its local copies itself.
	resp, err = noFollow.Get("http://" + c.replicas[0].listen + "/v2/team/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET of a blob with a local copy = %s, want 200 from the copy", resp.Status)
	}
}

// TestLocalCacheStaysUnderMaxSize: the local copies of a replica stay
// under storage.local_cache.max_size, least recently served going first,
// and what was evicted locally is served again from the bucket.
func TestLocalCacheStaysUnderMaxSize(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/a:v1", 2, 2<<20)
	up.Push(t, "team/b:v1", 2, 2<<20)
	const maxSize = 5 << 20
	c := startCluster(t, up, 1, options{storage: "  local_cache:\n    max_size: 5MiB\n"})
	r := c.replicas[0]
	for _, ref := range []string{"team/a:v1", "team/b:v1", "team/a:v1"} {
		if err := pullAll(r, ref); err != nil {
			t.Fatal(err)
		}
		// Copies are made after the client's last byte: wait for them.
		ts.WaitUntil(t, 20*time.Second, "fills end", func() (bool, string) {
			n := r.metric(t, "multiproxy_fills_in_flight", nil)
			return n == 0, fmt.Sprint(n)
		})
		n, files := dirSize(t, filepath.Join(r.dir, "data", upstreamName, "blobs"))
		if n > maxSize {
			t.Fatalf("after %s the local copies take %d bytes, over max_size %d: %v", ref, n, maxSize, files)
		}
		if m := r.metric(t, "multiproxy_local_cache_bytes", nil); int64(m) != n {
			t.Errorf("multiproxy_local_cache_bytes = %v, the copies on disk take %d", m, n)
		}
	}
	if n := r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "bucket"}); n == 0 {
		t.Error("the evicted image was not read back from the bucket")
	}
}

func dirSize(t *testing.T, dir string) (int64, map[string]int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	files := map[string]int64{}
	for _, e := range ents {
		fi, err := e.Info()
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
			files[e.Name()[:12]] = fi.Size()
		}
	}
	return n, files
}
