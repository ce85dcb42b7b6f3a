package proxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// requireThroughCache checks, at the upstream's blob server, that every blob
// was fetched exactly once, by multiproxy, with no Authorization header: the
// bytes the client got came through the cache. For the plain profile the
// registry serves blobs itself, and its request log is the proof.
func requireThroughCache(t *testing.T, up *ts.Upstream, blobs []string) {
	t.Helper()
	for _, d := range blobs {
		if up.CDN == nil {
			if n := up.Faults.Count("GET", "/blobs/"+d); n != 1 {
				t.Errorf("blob %s: %d upstream GETs, want 1", d, n)
			}
			continue
		}
		if n := up.CDN.Count("GET", d); n != 1 {
			t.Errorf("blob %s: the CDN saw %d GETs, want exactly 1", d, n)
		}
	}
	if up.CDN == nil {
		return
	}
	if n := up.CDN.AuthorizationSeen(); n != 0 {
		t.Errorf("%d requests reached the CDN with an Authorization header", n)
	}
	for _, r := range up.CDN.Requests() {
		if !strings.HasPrefix(r.UserAgent, "multiproxy/") {
			t.Errorf("the CDN served %s %s to %q, not to multiproxy", r.Method, r.Path, r.UserAgent)
		}
	}
}

// Every way a real registry answers (bearer tokens, blobs on a CDN, an API
// that redirects) pulls through the cache: single images and indexes, cold
// and then warm, with every byte verified and every blob fetched upstream
// exactly once.
func TestPullThroughEveryUpstreamProfile(t *testing.T) {
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/app:1", 3, 256<<10)
		idx := up.PushIndex(t, "library/multi:1")
		p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))

		got := pullImage(t, p, "docker.io", "library/app:1")
		ts.VerifyImage(t, got)
		if ts.Digest(t, got) != ts.Digest(t, img) {
			t.Fatalf("pulled %s, pushed %s", ts.Digest(t, got), ts.Digest(t, img))
		}
		requireThroughCache(t, up, ts.BlobDigests(t, img))

		ix, err := remote.Index(p.Ref(t, "docker.io", "library/multi:1"), ts.PullOptions()...)
		if err != nil {
			t.Fatalf("pull index: %v", err)
		}
		ts.VerifyIndex(t, ix)
		if ts.Digest(t, ix) != ts.Digest(t, idx) {
			t.Fatalf("pulled index %s, pushed %s", ts.Digest(t, ix), ts.Digest(t, idx))
		}

		if n := p.Metric(t, "multiproxy_upstream_redirects_total", map[string]string{"upstream": "docker.io"}); up.CDN != nil && n == 0 {
			t.Error("multiproxy_upstream_redirects_total is 0 after pulling through redirects")
		}

		// Warm: the same pull by digest never goes upstream, once the
		// fills have committed (just after their clients got the bytes).
		p.Settle(t)
		up.Faults.ResetCounts()
		if up.CDN != nil {
			up.CDN.ResetCounts()
		}
		ts.VerifyImage(t, pullImage(t, p, "docker.io", "library/app@"+ts.Digest(t, img)))
		if n := len(up.Faults.Requests()); n != 0 {
			t.Errorf("a warm pull by digest sent %d requests upstream: %v", n, up.Faults.Requests())
		}
		if up.CDN != nil && len(up.CDN.Requests()) != 0 {
			t.Errorf("a warm pull fetched %d blobs from the CDN", len(up.CDN.Requests()))
		}
	})
}

// 16 clients pulling one cold blob at once cost the upstream one download,
// through a redirect as much as without one.
func TestColdFanOutFetchesOnceFromEveryProfile(t *testing.T) {
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/big:1", 1, 8<<20)
		layer := ts.LayerDigests(t, img)[0]
		p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))
		const clients = 16
		results := fanOut(clients, p.URL("docker.io")+"/v2/library/big/blobs/"+layer, nil)
		for range clients {
			if r := <-results; r.err != nil || r.digest != layer {
				t.Fatalf("a client got %s (%v), want %s", r.digest, r.err, layer)
			}
		}
		requireThroughCache(t, up, []string{layer})
		if n := p.Metric(t, "multiproxy_upstream_fetched_bytes_total", map[string]string{"upstream": "docker.io"}); n != float64(layerSize(t, img, layer)) {
			t.Errorf("upstream bytes %v for a %d-byte blob, want exactly one download", n, layerSize(t, img, layer))
		}
	})
}

// A cached tag is served stale when the upstream fails, whatever its kind:
// the token service refusing, the CDN gone, the API host black-holed.
func TestStaleIfErrorOnEveryProfile(t *testing.T) {
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/app:1", 1, 1024)
		p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))
		pullImage(t, p, "docker.io", "library/app:1")

		up.Faults.Add(ts.Rule{PathContains: "/v2/", Action: ts.Status(http.StatusServiceUnavailable, nil)})
		resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/1", http.MethodGet)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, img) {
			t.Fatalf("upstream failing: %d %s, want the cached tag", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
		if w := resp.Header.Get("Warning"); !strings.Contains(w, "Stale") {
			t.Errorf("Warning %q, want a stale warning", w)
		}
		// The whole image still pulls: manifest and blobs are local.
		ts.VerifyImage(t, pullImage(t, p, "docker.io", "library/app:1"))
	})
}

// A bearer token is fetched once per repository and reused until shortly
// before it expires, then fetched again: never once per request, and never
// sent after it expired (the issuer's registry refuses it then).
func TestTokensAreReusedUntilTheyExpire(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{Token: true, CDN: true, TokenTTL: 4 * time.Second})
	img := ts.PushImage(t, reg, "library/app:1", 2, 4<<10)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	head := func() {
		t.Helper()
		resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/1", http.MethodHead)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("HEAD tag: %d", resp.StatusCode)
		}
	}
	head() // learns the realm: one 401, one token
	reg.Tokens().ResetCounts()
	refused := func() float64 {
		return p.Metric(t, "multiproxy_upstream_requests_total", map[string]string{"upstream": "docker.io", "method": "HEAD", "code": "401"})
	}
	before := refused()
	for range 5 {
		head()
	}
	if n := reg.Tokens().Count(); n != 0 {
		t.Errorf("5 more revalidations of one repository fetched %d tokens, want 0 (reuse)", n)
	}
	// The token lives 4 s and is renewed in its last half: after that the
	// next request fetches a new one first instead of being refused.
	time.Sleep(2200 * time.Millisecond)
	head()
	if n := reg.Tokens().Count(); n != 1 {
		t.Errorf("past the renewal time %d tokens were fetched, want 1", n)
	}
	if n := refused() - before; n != 0 {
		t.Errorf("the upstream refused %v requests: an expired token was sent", n)
	}
	ts.VerifyImage(t, pullImage(t, p, "docker.io", "library/app@"+ts.Digest(t, img)))
}
