package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// faultyUpstream is a real registry behind a scriptable fault injector.
func faultyUpstream(t *testing.T) (*ts.Registry, *ts.Faults) {
	t.Helper()
	f := ts.NewFaults()
	return ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap}), f
}

func TestNewPushIsSeenOnTheNextPull(t *testing.T) {
	up, f := faultyUpstream(t)
	v1img := ts.PushImage(t, up, "library/app:latest", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/app:latest")

	v2img := ts.PushImage(t, up, "library/app:latest", 1, 1024)
	f.ResetCounts()
	resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/latest", http.MethodGet)
	if got, want := resp.Header.Get("Docker-Content-Digest"), ts.Digest(t, v2img); got != want {
		t.Fatalf("after a push the proxy served %s, want the new %s (old: %s)", got, want, ts.Digest(t, v1img))
	}
	if heads := f.Count("HEAD", "/manifests/"); heads != 1 {
		t.Errorf("moved tag: %d upstream manifest HEADs, want 1 (%v)", heads, f.Requests())
	}
	if gets := f.Count("GET", "/manifests/"); gets > 1 {
		t.Errorf("moved tag: %d upstream manifest GETs, want at most 1 (%v)", gets, f.Requests())
	}

	f.ResetCounts()
	resp = get(t, p.URL("docker.io")+"/v2/library/app/manifests/latest", http.MethodGet)
	if got := resp.Header.Get("Docker-Content-Digest"); got != ts.Digest(t, v2img) {
		t.Fatalf("unchanged tag served %s", got)
	}
	if heads, gets := f.Count("HEAD", "/manifests/"), f.Count("GET", "/manifests/"); heads != 1 || gets != 0 {
		t.Errorf("unchanged tag: %d HEADs and %d GETs upstream, want 1 and 0 (%v)", heads, gets, f.Requests())
	}
}

func TestTagFreshnessWindowSkipsRevalidation(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) { u.TagFreshness = time.Hour }})
	pullImage(t, p, "docker.io", "library/app:1")
	f.ResetCounts()
	resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/1", http.MethodGet)
	if resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, img) {
		t.Fatalf("wrong digest within the freshness window")
	}
	if n := len(f.Requests()); n != 0 {
		t.Errorf("within tag_freshness the upstream was asked %d times: %v", n, f.Requests())
	}
}

func TestCachedDigestMakesNoUpstreamRequest(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 3, 8<<10)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	ref := "library/app@" + ts.Digest(t, img)
	pullImage(t, p, "docker.io", ref)
	f.ResetCounts()
	pullImage(t, p, "docker.io", ref)
	if reqs := f.Requests(); len(reqs) != 0 {
		t.Errorf("a cached digest went upstream: %v", reqs)
	}
}

func TestBlackHoledUpstreamServesCachedTagStale(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/app:1")

	f.Add(ts.Rule{PathContains: "/v2/", Action: ts.BlackHole()})
	t.Cleanup(f.ReleaseHeld)
	// The proxy must answer once its upstream timeout has passed; the
	// client waits far longer, so only a hang (no answer at all) fails
	// here, never a slow machine.
	c := &http.Client{Timeout: p.Config.Upstreams[0].Timeout + 10*time.Second}
	resp := getWith(t, c, p.URL("docker.io")+"/v2/library/app/manifests/1", http.MethodGet)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, img) {
		t.Fatalf("black-holed upstream: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	if w := resp.Header.Get("Warning"); !strings.Contains(w, "Stale") || !strings.Contains(w, "timeout") {
		t.Errorf("Warning header %q, want a stale warning naming the timeout", w)
	}
	if n := p.Metric(t, "multiproxy_stale_serves_total", map[string]string{"upstream": "docker.io", "cause": "timeout"}); n != 1 {
		t.Errorf("multiproxy_stale_serves_total{cause=timeout} = %v, want 1", n)
	}
	// The operator's record of it, with what was served and why.
	if logs := p.Logs(); !strings.Contains(logs, `msg="serving stale tag"`) || !strings.Contains(logs, "cause=timeout") {
		t.Error("no log line tells the operator a tag was served stale because of the timeout")
	}
}

func TestRateLimitedUpstream(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/cached:1", 1, 1024)
	ts.PushImage(t, up, "library/uncached:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/cached:1")

	f.Add(ts.Rule{PathContains: "/manifests/", Action: ts.Status(http.StatusTooManyRequests, map[string]string{"Retry-After": "17"})})
	resp := get(t, p.URL("docker.io")+"/v2/library/uncached/manifests/1", http.MethodGet)
	if code := ociCode(t, resp); resp.StatusCode != http.StatusTooManyRequests || code != "TOOMANYREQUESTS" {
		t.Errorf("uncached under 429: %d %s, want 429 TOOMANYREQUESTS", resp.StatusCode, code)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "17" {
		t.Errorf("Retry-After %q, want the upstream's 17", ra)
	}
	resp = get(t, p.URL("docker.io")+"/v2/library/cached/manifests/1", http.MethodGet)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, img) {
		t.Errorf("cached under 429: %d, want the cached tag", resp.StatusCode)
	}
	if !strings.Contains(resp.Header.Get("Warning"), "rate_limited") {
		t.Errorf("cached under 429: Warning %q", resp.Header.Get("Warning"))
	}
}

// The rule for a cached tag the upstream answers 404 for: a working upstream
// is the authority on its tags, so the 404 is passed on (the tag was
// deleted); only a failing upstream (5xx, timeout, 429, auth) gets the stale
// copy served instead.
func TestUpstream404DropsCachedTagButFailuresServeStale(t *testing.T) {
	up, f := faultyUpstream(t)
	gone := ts.PushImage(t, up, "library/gone:1", 1, 1024)
	kept := ts.PushImage(t, up, "library/kept:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	pullImage(t, p, "docker.io", "library/gone:1")
	pullImage(t, p, "docker.io", "library/kept:1")

	resp := get(t, up.URL()+"/v2/library/gone/manifests/"+ts.Digest(t, gone), http.MethodDelete)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete upstream: %d", resp.StatusCode)
	}
	resp = get(t, p.URL("docker.io")+"/v2/library/gone/manifests/1", http.MethodGet)
	if code := ociCode(t, resp); resp.StatusCode != http.StatusNotFound || code != "MANIFEST_UNKNOWN" {
		t.Errorf("tag deleted upstream: %d %s, want 404 MANIFEST_UNKNOWN", resp.StatusCode, code)
	}
	// It stays gone when the upstream fails later: the 404 dropped it.
	f.Add(ts.Rule{PathContains: "/manifests/", Action: ts.Status(http.StatusServiceUnavailable, nil)})
	resp = get(t, p.URL("docker.io")+"/v2/library/gone/manifests/1", http.MethodGet)
	if resp.StatusCode == http.StatusOK {
		t.Error("a tag deleted upstream came back during an outage")
	}
	resp = get(t, p.URL("docker.io")+"/v2/library/kept/manifests/1", http.MethodGet)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, kept) {
		t.Errorf("cached tag with upstream 503: %d, want stale 200", resp.StatusCode)
	}
}

// 32 clients pulling one cold blob at once share one upstream GET, and
// stream from it as it arrives: with the upstream holding the rest of the
// body, every one of them already has its first bytes.
func TestConcurrentColdPullsShareOneUpstreamFetch(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/big:1", 1, 4<<20)
	layer := ts.LayerDigests(t, img)[0]
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	release := make(chan struct{})
	var once sync.Once
	releaseUpstream := func() { once.Do(func() { close(release) }) }
	t.Cleanup(releaseUpstream)
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: ts.HoldBody(256<<10, release)})

	const clients = 32
	var first atomic.Int64
	results := fanOut(clients, p.URL("docker.io")+"/v2/library/big/blobs/"+layer, func() { first.Add(1) })
	ts.WaitUntil(t, time.Minute, "every client's first bytes while the upstream holds the body", func() (bool, string) {
		select {
		case r := <-results:
			t.Fatalf("a client ended while the upstream still held the body: %v (digest %s)", r.err, r.digest)
		default:
		}
		n := first.Load()
		return n == clients, fmt.Sprintf("%d of %d clients with bytes", n, clients)
	})
	releaseUpstream()
	for range clients {
		if r := <-results; r.err != nil || r.digest != layer {
			t.Fatalf("a client got %s (%v), want %s", r.digest, r.err, layer)
		}
	}
	if n := f.Count("GET", "/blobs/"+layer); n != 1 {
		t.Errorf("%d concurrent cold clients caused %d upstream GETs, want 1", clients, n)
	}
	if n := p.Metric(t, "multiproxy_dedup_waiters_total", map[string]string{"upstream": "docker.io", "kind": "blob"}); n != clients-1 {
		t.Errorf("dedup waiters %v, want %d", n, clients-1)
	}
}

type blobResult struct {
	digest string
	err    error
}

// blobClient fetches blobs in these tests: its timeout only catches a
// hang.
var blobClient = &http.Client{Timeout: 2 * time.Minute}

// fetchBlob GETs url and hashes the body. firstByte, if set, is called
// when the first byte of the body has arrived.
func fetchBlob(url string, firstByte func()) blobResult {
	resp, err := blobClient.Get(url)
	if err != nil {
		return blobResult{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return blobResult{err: fmt.Errorf("status %d", resp.StatusCode)}
	}
	h := sha256.New()
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 && firstByte != nil {
			firstByte()
			firstByte = nil
		}
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return blobResult{err: err}
		}
	}
	return blobResult{digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}
}

// fanOut has n clients GET url at once (fetchBlob), and sends each one's
// result as it ends.
func fanOut(n int, url string, firstByte func()) <-chan blobResult {
	results := make(chan blobResult, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			results <- fetchBlob(url, firstByte)
		}()
	}
	close(start)
	return results
}

func TestCorruptUpstreamNeverEntersTheCache(t *testing.T) {
	modes := []struct {
		name   string
		action ts.Action
	}{
		{"truncate", ts.Truncate(100 << 10)},
		{"flip a byte", ts.FlipByte(200 << 10)},
		{"close mid-stream", ts.CloseMidStream(150 << 10)},
		{"server error", ts.Status(http.StatusInternalServerError, nil)},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			up, f := faultyUpstream(t)
			img := ts.PushImage(t, up, "library/app:1", 1, 512<<10)
			layer := ts.LayerDigests(t, img)[0]
			p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
			remove := f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + layer, Action: m.action})

			r := fetchBlob(p.URL("docker.io")+"/v2/library/app/blobs/"+layer, nil)
			if r.err == nil {
				t.Fatalf("client got a complete 200 body (digest %s) from a %s upstream", r.digest, m.name)
			}
			if blobStored(t, p, layer) {
				t.Fatal("the bad fill left a blob in the cache")
			}
			remove()
			r = fetchBlob(p.URL("docker.io")+"/v2/library/app/blobs/"+layer, nil)
			if r.err != nil || r.digest != layer {
				t.Fatalf("next pull: %v %s", r.err, r.digest)
			}
			ts.WaitFor(t, 10*time.Second, "the good fill is stored", func() bool { return blobStored(t, p, layer) })
		})
	}
}

func TestCorruptManifestIsRefused(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 1024)
	d := ts.Digest(t, img)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	remove := f.Add(ts.Rule{Method: "GET", PathContains: "/manifests/", Action: ts.FlipByte(10)})
	resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/"+d, http.MethodGet)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("corrupt manifest: %d, want 502", resp.StatusCode)
	}
	remove()
	if got := ts.Digest(t, pullImage(t, p, "docker.io", "library/app@"+d)); got != d {
		t.Fatalf("after the fault: %s", got)
	}
}

// blobStored reports whether a blob's data is committed in the proxy's store.
func blobStored(t *testing.T, p *ts.Proxy, d string) bool {
	t.Helper()
	hexd := strings.TrimPrefix(d, "sha256:")
	path := filepath.Join(p.Config.Upstreams[0].Storage.Path, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
	_, err := os.Stat(path)
	return err == nil
}
