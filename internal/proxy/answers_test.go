package proxy_test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// An upstream that accepts a blob request and then sends no headers must
// cost the client a 503 or 504 with an OCI error body, for GET and HEAD
// alike, on the first request for a repository and on later ones: never a
// 200 with an empty body, which a client may take for the blob.
func TestHangBeforeHeadersIsAnErrorNeverAnEmpty200(t *testing.T) {
	up, f := faultyUpstream(t)
	const images = 5
	var layers []string
	for i := range images {
		img := ts.PushImage(t, up, fmt.Sprintf("library/app%d:1", i), 1, 64<<10)
		layers = append(layers, ts.LayerDigests(t, img)[0])
	}
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) { u.Timeout = 500 * time.Millisecond }})
	timeout := p.Config.Upstreams[0].Timeout

	// The repositories' manifests come through first for half of them, so
	// both the first request for a repository and a later one are tried.
	for i := range images / 2 {
		if resp := get(t, fmt.Sprintf("%s/v2/library/app%d/manifests/1", p.URL("docker.io"), i), http.MethodGet); resp.StatusCode != http.StatusOK {
			t.Fatalf("manifest of app%d: %d", i, resp.StatusCode)
		}
	}
	f.Add(ts.Rule{PathContains: "/blobs/", Action: ts.BlackHole()})
	t.Cleanup(f.ReleaseHeld)

	// No client gives up before the proxy must have answered; a generous
	// margin keeps a loaded CI machine from failing the test, while a hang
	// (no answer at all) still fails it.
	client := &http.Client{Timeout: timeout + 5*time.Second}
	var slowest time.Duration
	for try := range 10 {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			i := try % images
			url := fmt.Sprintf("%s/v2/library/app%d/blobs/%s", p.URL("docker.io"), i, layers[i])
			req, _ := http.NewRequest(method, url, nil)
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s try %d: %v", method, try, err)
			}
			slowest = max(slowest, time.Since(start))
			if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusGatewayTimeout {
				t.Fatalf("%s of a blob whose upstream hangs before headers: %d, want 503 or 504", method, resp.StatusCode)
			}
			if method == http.MethodGet {
				if code := ociCode(t, resp); code != "UNAVAILABLE" {
					t.Errorf("GET: OCI code %q, want UNAVAILABLE", code)
				}
			} else {
				resp.Body.Close()
			}
		}
	}
	t.Logf("slowest answer %v with timeout %v", slowest, timeout)
}

// A HEAD of a blob that is not cached is answered from one upstream HEAD:
// the right size, and no download.
func TestHeadOfColdBlobDoesNotDownload(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 2<<20)
	layer := ts.LayerDigests(t, img)[0]
	size := layerSize(t, img, layer)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})

	f.ResetCounts()
	resp := get(t, p.URL("docker.io")+"/v2/library/app/blobs/"+layer, http.MethodHead)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD of a cold blob: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.FormatInt(size, 10) {
		t.Errorf("Content-Length %s, want %d", got, size)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != layer {
		t.Errorf("Docker-Content-Digest %s, want %s", got, layer)
	}
	if n := f.Count("GET", "/blobs/"); n != 0 {
		t.Errorf("a HEAD downloaded the blob: %d upstream GETs (%v)", n, f.Requests())
	}
	if n := f.Count("HEAD", "/blobs/"+layer); n != 1 {
		t.Errorf("%d upstream HEADs of the blob, want 1", n)
	}
	if blobStored(t, p, layer) {
		t.Error("a HEAD stored the blob")
	}

	// A blob the upstream does not have is a 404 for a HEAD too.
	missing := "sha256:" + fmt.Sprintf("%064x", 1)
	resp = get(t, p.URL("docker.io")+"/v2/library/app/blobs/"+missing, http.MethodHead)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("HEAD of a blob the upstream lacks: %d, want 404", resp.StatusCode)
	}
}

// 200 nodes asking for the same tag at once cost the upstream one HEAD, or
// two if some arrive just as the first returns. The upstream takes a second
// to answer a HEAD, a slow registry across the internet: long enough for
// 200 clients started together to all arrive while it is out, even on a
// loaded two-core CI machine under the race detector.
func TestConcurrentTagPullsShareOneUpstreamHEAD(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:latest", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/app:latest")
	f.Add(ts.Rule{Method: "HEAD", PathContains: "/manifests/latest", Action: ts.Delay(time.Second)})
	f.ResetCounts()

	const clients = 200
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	want := ts.Digest(t, img)
	errs := make(chan error, clients)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest(http.MethodHead, p.URL("docker.io")+"/v2/library/app/manifests/latest", nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want {
				errs <- fmt.Errorf("status %d digest %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a concurrent pull failed: %v", err)
	}
	if n := f.Count("HEAD", "/manifests/latest"); n > 2 {
		t.Errorf("%d concurrent pulls of one tag sent %d upstream HEADs, want at most 2", clients, n)
	}
	if n := p.Metric(t, "multiproxy_dedup_waiters_total", map[string]string{"upstream": "docker.io", "kind": "tag"}); n < clients/2 {
		t.Errorf("multiproxy_dedup_waiters_total{kind=tag} = %v, want most of the %d pulls", n, clients)
	}
}

func layerSize(t *testing.T, img v1.Image, layer string) int64 {
	t.Helper()
	h, err := v1.NewHash(layer)
	if err != nil {
		t.Fatal(err)
	}
	l, err := img.LayerByDigest(h)
	if err != nil {
		t.Fatal(err)
	}
	n, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
