package proxy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// repoDirs lists every directory under the proxy's repositories/, as paths
// relative to it: what a read must never add to.
func repoDirs(t *testing.T, p *ts.Proxy) []string {
	t.Helper()
	root := filepath.Join(p.Config.Upstreams[0].Storage.Path, "docker/registry/v2/repositories")
	return ts.DirsUnder(t, root)
}

// layerLinked reports whether repo's _layers link to blob d exists.
func layerLinked(p *ts.Proxy, repo, d string) bool {
	hexd := strings.TrimPrefix(d, "sha256:")
	_, err := os.Stat(filepath.Join(p.Config.Upstreams[0].Storage.Path,
		"docker/registry/v2/repositories", repo, "_layers/sha256", hexd, "link"))
	return err == nil
}

func randomName() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	// Nested names too: a repository may sit inside another's directory.
	return "rnd/" + hex.EncodeToString(b[:3]) + "/x" + hex.EncodeToString(b[3:])
}

// Any name is accepted for a blob, since blobs are served by digest; a
// client looping over random names must neither create repositories (a
// directory each here, bucket objects on S3) nor grow the catalog, and a
// cached blob is served without asking the upstream.
func TestBlobReadsUnderUnknownNamesCreateNoRepository(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 16<<10)
	layer := ts.LayerDigests(t, img)[0]
	size := layerSize(t, img, layer)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/app:1")
	p.Settle(t)
	if !layerLinked(p, "library/app", layer) {
		t.Fatal("a pull did not link its layer into its repository")
	}
	base := p.URL("docker.io")
	dirsBefore := repoDirs(t, p)
	catalogBefore, _ := io.ReadAll(get(t, base+"/v2/_catalog", http.MethodGet).Body)
	f.ResetCounts()

	const gets, heads, workers = 1000, 100, 8
	type result struct {
		name string
		err  error
	}
	jobs := make(chan string)
	results := make(chan result, gets+heads)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for method := range jobs {
				name := randomName()
				url := base + "/v2/" + name + "/blobs/" + layer
				results <- result{name, checkBlob(method, url, layer, size)}
			}
		})
	}
	for i := range gets + heads {
		if i%11 == 10 && i/11 < heads {
			jobs <- http.MethodHead
		} else {
			jobs <- http.MethodGet
		}
	}
	close(jobs)
	wg.Wait()
	close(results)
	failed := 0
	for r := range results {
		if r.err != nil {
			if failed++; failed <= 5 {
				t.Errorf("%s: %v", r.name, r.err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d reads of a cached blob under new names failed", failed, gets+heads)
	}

	if after := repoDirs(t, p); !slices.Equal(after, dirsBefore) {
		added := 0
		for _, d := range after {
			if !slices.Contains(dirsBefore, d) {
				added++
			}
		}
		t.Errorf("%d reads under new names added %d directories under repositories/ (%d before, %d after)",
			gets+heads, added, len(dirsBefore), len(after))
	}
	catalogAfter, _ := io.ReadAll(get(t, base+"/v2/_catalog", http.MethodGet).Body)
	if !bytes.Equal(catalogAfter, catalogBefore) {
		t.Errorf("_catalog changed: %s, was %s", catalogAfter, catalogBefore)
	}
	if reqs := f.Requests(); len(reqs) != 0 {
		t.Errorf("a cached blob read under new names asked the upstream %d times: %v", len(reqs), reqs[:min(len(reqs), 5)])
	}
}

// checkBlob reads d through url and checks what a client checks: 200, the
// length, and for a GET bytes that hash to d.
func checkBlob(method, url, d string, size int64) error {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return err
	}
	resp, err := getClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d", method, resp.StatusCode)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.FormatInt(size, 10) {
		return fmt.Errorf("%s: Content-Length %s, want %d", method, cl, size)
	}
	if method == http.MethodGet {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != size || got != d {
			return fmt.Errorf("GET: %d bytes hashing to %s, want %d of %s", n, got, size, d)
		}
	}
	return nil
}

// A blob not cached yet is asked of the upstream under the client's name.
// Where the upstream has no such repository it answers 404, and so does the
// proxy, writing nothing; where it has, the blob is stored by digest, but
// no repository is made for it until a manifest is.
func TestUncachedBlobUnderNameWithoutManifest(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 16<<10)
	layer := ts.LayerDigests(t, img)[0]
	size := layerSize(t, img, layer)
	ts.PushImage(t, up, "team/other:1", 1, 4096)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	base := p.URL("docker.io")
	f.ResetCounts()

	name := randomName()
	resp := get(t, base+"/v2/"+name+"/blobs/"+layer, http.MethodGet)
	if code := ociCode(t, resp); resp.StatusCode != http.StatusNotFound || code != "BLOB_UNKNOWN" {
		t.Errorf("a blob the upstream has only under another name: %d %s, want 404 BLOB_UNKNOWN", resp.StatusCode, code)
	}
	if n := f.Count("GET", "/blobs/"+layer); n != 1 {
		t.Errorf("%d upstream GETs, want the 1 that answered 404", n)
	}
	p.Settle(t)
	if dirs := repoDirs(t, p); len(dirs) != 0 {
		t.Errorf("a 404 left directories under repositories/: %v", dirs)
	}
	if blobStored(t, p, layer) {
		t.Error("a 404 stored the blob")
	}

	// The upstream's own name, which the cache has no manifest for.
	if err := checkBlob(http.MethodGet, base+"/v2/library/app/blobs/"+layer, layer, size); err != nil {
		t.Fatalf("uncached blob from the upstream: %v", err)
	}
	p.Settle(t)
	if !blobStored(t, p, layer) {
		t.Error("a blob filled from the upstream was not stored")
	}
	if dirs := repoDirs(t, p); len(dirs) != 0 {
		t.Errorf("a fill under a name with no manifest made repositories: %v", dirs)
	}
	// Once the repository holds a manifest its blobs are linked, and so is
	// a blob stored for another name that a repository with a manifest
	// asks for.
	pullImage(t, p, "docker.io", "library/app:1")
	pullImage(t, p, "docker.io", "team/other:1")
	p.Settle(t)
	if !layerLinked(p, "library/app", layer) {
		t.Error("after the pull, library/app does not link its layer")
	}
	if err := checkBlob(http.MethodGet, base+"/v2/team/other/blobs/"+layer, layer, size); err != nil {
		t.Fatalf("a blob stored for another repository: %v", err)
	}
	if !layerLinked(p, "team/other", layer) {
		t.Error("a repository with a manifest did not link a blob stored for another")
	}
	if got := follow(t, base, "/v2/_catalog", "repositories"); !slices.Equal(got, []string{"library/app", "team/other"}) {
		t.Errorf("_catalog: %v, want the two pulled repositories", got)
	}
}
