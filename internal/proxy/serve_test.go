package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// pullImage pulls repoAndRef through the proxy and verifies every blob
// against its digest.
func pullImage(t *testing.T, p *ts.Proxy, upstream, repoAndRef string) v1.Image {
	t.Helper()
	img, err := remote.Image(p.Ref(t, upstream, repoAndRef), ts.PullOptions()...)
	if err != nil {
		t.Fatalf("pull %s via %s: %v", repoAndRef, upstream, err)
	}
	ts.VerifyImage(t, img)
	return img
}

func TestPullEveryKindOfImageThroughItsPort(t *testing.T) {
	plain := ts.StartRegistry(t, ts.RegistryOptions{})
	authed := ts.StartRegistry(t, ts.RegistryOptions{Username: "puller", Password: "s3cret-upstream-pw"})
	secure := ts.StartRegistry(t, ts.RegistryOptions{TLS: true})

	single := ts.PushImage(t, plain, "library/single:1.0", 1, 1024)
	multi := ts.PushImage(t, plain, "team/multi:v2", 4, 2<<20)
	index := ts.PushIndex(t, plain, "library/multiarch:latest")
	private := ts.PushImage(t, authed, "private/app:1", 2, 4096)
	tlsImg := ts.PushImage(t, secure, "tls/app:1", 2, 4096)

	p := ts.StartProxy(t,
		ts.ProxyUpstream{Name: "docker.io", Reg: plain},
		ts.ProxyUpstream{Name: "ghcr.io", Reg: authed},
		ts.ProxyUpstream{Name: "quay.io", Reg: secure},
	)

	cases := []struct {
		upstream, repo, tag string
		img                 v1.Image
	}{
		{"docker.io", "library/single", "1.0", single},
		{"docker.io", "team/multi", "v2", multi},
		{"ghcr.io", "private/app", "1", private},
		{"quay.io", "tls/app", "1", tlsImg},
	}
	for _, c := range cases {
		want := ts.Digest(t, c.img)
		for _, ref := range []string{c.repo + ":" + c.tag, c.repo + "@" + want} {
			got := pullImage(t, p, c.upstream, ref)
			if d := ts.Digest(t, got); d != want {
				t.Errorf("%s via %s: digest %s, want %s", ref, c.upstream, d, want)
			}
		}
	}

	idx, err := remote.Index(p.Ref(t, "docker.io", "library/multiarch:latest"), ts.PullOptions()...)
	if err != nil {
		t.Fatalf("pull index: %v", err)
	}
	ts.VerifyIndex(t, idx)
	if got, want := ts.Digest(t, idx), ts.Digest(t, index); got != want {
		t.Errorf("index digest %s, want %s", got, want)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := remote.Image(p.Ref(t, "docker.io", "library/multiarch:latest"),
			append(ts.PullOptions(), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))...)
		if err != nil {
			t.Fatalf("pull %s child: %v", arch, err)
		}
		ts.VerifyImage(t, img)
		cf, err := img.ConfigFile()
		if err != nil || cf.Architecture != arch {
			t.Errorf("%s child: config architecture %q (err %v)", arch, cf.Architecture, err)
		}
	}

	if strings.Contains(p.Logs(), "s3cret-upstream-pw") {
		t.Error("the upstream password appears in the logs")
	}
}

func TestCachedDigestServesWithUpstreamStopped(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 2, 64<<10)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	want := ts.Digest(t, img)
	pullImage(t, p, "docker.io", "library/app:1")
	up.Stop()
	got := pullImage(t, p, "docker.io", "library/app@"+want)
	if d := ts.Digest(t, got); d != want {
		t.Fatalf("digest %s, want %s", d, want)
	}
	// The tag too, marked stale.
	resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/1", http.MethodGet)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want {
		t.Fatalf("tag with upstream down: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	if !strings.Contains(resp.Header.Get("Warning"), "Stale") {
		t.Errorf("stale tag without Warning header: %q", resp.Header.Get("Warning"))
	}
}

func TestUpstreamDownAtStart(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	cached := ts.PushImage(t, up, "library/cached:1", 1, 32<<10)
	uncached := ts.PushImage(t, up, "library/uncached:1", 1, 32<<10)

	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	first := ts.StartProxyConfig(t, cfg)
	pullImage(t, first, "docker.io", "library/cached:1")
	first.Stop()
	up.Stop()

	// A new process over the same storage, with the upstream down.
	p := ts.StartProxyConfig(t, cfg)
	for _, ref := range []string{"library/cached:1", "library/cached@" + ts.Digest(t, cached)} {
		if d := ts.Digest(t, pullImage(t, p, "docker.io", ref)); d != ts.Digest(t, cached) {
			t.Errorf("%s: digest %s", ref, d)
		}
	}

	// An answer, not a hang: the client waits far beyond the upstream
	// timeout, so only a proxy that never answers fails here.
	c := &http.Client{Timeout: p.Config.Upstreams[0].Timeout + 10*time.Second}
	for _, path := range []string{
		"/v2/library/uncached/manifests/1",
		"/v2/library/uncached/manifests/" + ts.Digest(t, uncached),
		"/v2/library/uncached/blobs/" + ts.LayerDigests(t, uncached)[0],
	} {
		resp := getWith(t, c, p.URL("docker.io")+path, http.MethodGet)
		if code := ociCode(t, resp); resp.StatusCode != http.StatusServiceUnavailable || code != "UNAVAILABLE" {
			t.Errorf("%s with upstream down: %d %s, want 503 UNAVAILABLE", path, resp.StatusCode, code)
		}
	}

	up.Start()
	got := pullImage(t, p, "docker.io", "library/uncached:1")
	if d := ts.Digest(t, got); d != ts.Digest(t, uncached) {
		t.Fatalf("after the upstream came back: digest %s", d)
	}
}

func TestClientsCannotWrite(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, up, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})

	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v2/library/app/blobs/uploads/"},
		{http.MethodPut, "/v2/library/app/manifests/1"},
		{http.MethodPatch, "/v2/library/app/blobs/uploads/x"},
		{http.MethodDelete, "/v2/library/app/manifests/1"},
	} {
		resp := get(t, p.URL("docker.io")+c.path, c.method)
		if code := ociCode(t, resp); resp.StatusCode != http.StatusMethodNotAllowed || code != "UNSUPPORTED" {
			t.Errorf("%s %s: %d %s, want 405 UNSUPPORTED", c.method, c.path, resp.StatusCode, code)
		}
	}

	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(p.Ref(t, "docker.io", "library/evil:1"), img, ts.PullOptions()...); err == nil {
		t.Fatal("a push through the proxy succeeded")
	}
	resp := get(t, up.URL()+"/v2/library/evil/tags/list", http.MethodGet)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("pushed repository reached the upstream: %d", resp.StatusCode)
	}
}

func TestBadRequestsGetOCIErrors(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	for _, c := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/Bad_Name/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/app/manifests/sha256:nothex", 400, "DIGEST_INVALID"},
		{"/v2/library/app/manifests/-bad-tag", 400, "TAG_INVALID"},
		{"/v2/library/app/blobs/notadigest", 400, "DIGEST_INVALID"},
		{"/v2/library/missing/manifests/latest", 404, "MANIFEST_UNKNOWN"},
		{"/v2/library/missing/blobs/sha256:" + strings.Repeat("ab", 32), 404, "BLOB_UNKNOWN"},
	} {
		resp := get(t, p.URL("docker.io")+c.path, http.MethodGet)
		if code := ociCode(t, resp); resp.StatusCode != c.status || code != c.code {
			t.Errorf("%s: %d %s, want %d %s", c.path, resp.StatusCode, code, c.status, c.code)
		}
	}
}

// getClient is get's: its timeout only catches a hang.
var getClient = &http.Client{Timeout: 30 * time.Second}

// get sends a bodiless request asking for any manifest type and returns
// the response with its body read (and readable again).
func get(t *testing.T, url, method string) *http.Response {
	t.Helper()
	return getWith(t, getClient, url, method)
}

// getWith is get with another client, e.g. one whose timeout fits a test.
func getWith(t *testing.T, c *http.Client, url, method string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join(upstream.ManifestAccept, ", "))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

// ociCode returns the first OCI error code in the body, "" if none.
func ociCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	var body struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	if json.Unmarshal(b, &body) != nil || len(body.Errors) == 0 {
		return ""
	}
	return body.Errors[0].Code
}

func TestCachedBlobServesRangesAndHead(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 1, 64<<10)
	layer := ts.LayerDigests(t, img)[0]
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	url := p.URL("docker.io") + "/v2/library/app/blobs/" + layer
	full := get(t, url, http.MethodGet) // fills the cache
	body, _ := io.ReadAll(full.Body)
	// The client has its last byte once it is verified; the blob is
	// servable from the store (with ranges) once committed just after.
	ts.WaitFor(t, 10*time.Second, "the blob is stored", func() bool { return blobStored(t, p, layer) })

	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Range", "bytes=100-199")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(part) != string(body[100:200]) {
		t.Errorf("range of a cached blob: %d, %d bytes", resp.StatusCode, len(part))
	}
	head := get(t, url, http.MethodHead)
	if head.StatusCode != http.StatusOK || head.Header.Get("Docker-Content-Digest") != layer ||
		head.ContentLength != int64(len(body)) {
		t.Errorf("HEAD of a cached blob: %d %s %d", head.StatusCode, head.Header.Get("Docker-Content-Digest"), head.ContentLength)
	}
}

// A repository may be named with segments the API uses for its own paths:
// its pulls are still pulls, not referrers or manifest requests with a
// slash in the reference.
func TestRepositoriesNamedLikeAPISegmentsPull(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	for _, repo := range []string{"org/referrers/app", "org/manifests/app", "org/blobs/app"} {
		want := ts.Digest(t, ts.PushImage(t, up, repo+":1", 2, 1024))
		for _, ref := range []string{repo + ":1", repo + "@" + want} {
			if got := ts.Digest(t, pullImage(t, p, "docker.io", ref)); got != want {
				t.Errorf("%s: digest %s, want %s", ref, got, want)
			}
		}
	}
}
