package testsupport

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

type faultFixture struct {
	f      *Faults
	r      *Registry
	digest string
	url    string
	blob   []byte // the layer blob as stored upstream
}

func newFaultFixture(t *testing.T, opts RegistryOptions) *faultFixture {
	t.Helper()
	f := NewFaults()
	opts.Wrap = f.Wrap
	r := StartRegistry(t, opts)
	img := PushImage(t, r, "faults/app:v1", 1, 64<<10)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	d := Digest(t, layers[0])
	f.ResetCounts()
	return &faultFixture{f: f, r: r, digest: d, url: r.BlobURL("faults/app", d), blob: blob}
}

// get fetches the blob and returns the response, the body read so far and
// the read error.
func (fx *faultFixture) get(t *testing.T, c *http.Client) (*http.Response, []byte, error) {
	t.Helper()
	if c == nil {
		c = fx.r.HTTPClient()
	}
	resp, err := c.Get(fx.url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func (fx *faultFixture) requireIntact(t *testing.T) {
	t.Helper()
	resp, body, err := fx.get(t, nil)
	if err != nil {
		t.Fatalf("clean GET: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, fx.blob) {
		t.Fatalf("clean GET: status %d, %d bytes, intact=%v", resp.StatusCode, len(body), bytes.Equal(body, fx.blob))
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestFaultTruncate(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{Method: http.MethodGet, PathContains: fx.digest, Times: 1, Action: Truncate(1000)})

	resp, body, err := fx.get(t, nil)
	if resp == nil {
		t.Fatalf("GET: %v", err)
	}
	if resp.ContentLength != int64(len(fx.blob)) {
		t.Fatalf("Content-Length %d, want the original %d", resp.ContentLength, len(fx.blob))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("want unexpected EOF, got %v", err)
	}
	if len(body) != 1000 || !bytes.Equal(body, fx.blob[:1000]) {
		t.Fatalf("got %d bytes, want the first 1000", len(body))
	}
	fx.requireIntact(t) // Times: 1 is used up
}

func TestFaultCloseMidStream(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: CloseMidStream(1000)})

	_, body, err := fx.get(t, nil)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want connection reset, got %v", err)
	}
	if len(body) > 1000 || !bytes.Equal(body, fx.blob[:len(body)]) {
		t.Fatalf("got %d bytes, want a prefix of at most 1000", len(body))
	}
	fx.requireIntact(t)
}

func TestFaultFlipByte(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: fx.digest, Action: FlipByte(100)})

	resp, body, err := fx.get(t, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %v", err)
	}
	if len(body) != len(fx.blob) {
		t.Fatalf("length %d, want %d", len(body), len(fx.blob))
	}
	if sha(body) == fx.digest {
		t.Fatal("digest still matches")
	}
	want := slices.Clone(fx.blob)
	want[100] ^= 0xff
	if !bytes.Equal(body, want) {
		t.Fatal("body differs in more than byte 100")
	}

	// The corruption is what digest verification exists for.
	img, err := remote.Image(mustRef(t, fx.r.Ref("faults/app:v1")), fx.r.RemoteOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkImage(img); err == nil {
		t.Fatal("pull of a corrupted layer verified")
	}
}

func TestFaultStatus(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: "/blobs/", Times: 2, Action: Status(http.StatusTooManyRequests, map[string]string{"Retry-After": "7"})})

	for range 2 {
		resp, body, err := fx.get(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" {
			t.Fatalf("status %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		var e struct {
			Errors []struct{ Code, Message string }
		}
		if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Code != "TOOMANYREQUESTS" {
			t.Fatalf("error body %q: %v", body, err)
		}
	}
	fx.requireIntact(t)
	if n := fx.f.Count(http.MethodGet, fx.digest); n != 3 {
		t.Fatalf("counted %d GETs, want 3", n)
	}
}

func TestFaultBody(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: Body(http.StatusOK, "text/html", "<html>portal</html>")})
	resp, body, err := fx.get(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/html" || string(body) != "<html>portal</html>" {
		t.Fatalf("status %d, Content-Type %q, body %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	fx.requireIntact(t)
}

func TestFaultContentType(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	for _, ct := range []string{"text/plain", ""} {
		fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: ContentType(ct)})
		resp, body, err := fx.get(t, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, sent := resp.Header["Content-Type"], resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK ||
			sent != ct || (ct == "" && got != nil) || !bytes.Equal(body, fx.blob) {
			t.Fatalf("ContentType(%q): status %d, Content-Type %q, intact=%v", ct, resp.StatusCode, got, bytes.Equal(body, fx.blob))
		}
	}
	fx.requireIntact(t)
}

func TestFaultBlackHole(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: "/blobs/", Action: BlackHole()})

	c := fx.r.HTTPClient()
	c.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, _, err := fx.get(t, c)
	elapsed := time.Since(start)
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("want client timeout, got %v", err)
	}
	if elapsed < c.Timeout || elapsed > 5*time.Second {
		t.Fatalf("timed out after %v", elapsed)
	}

	// ReleaseHeld frees a request the client would wait on forever. The
	// client must not reuse connections: net/http silently retries a GET
	// whose reused connection drops before any response, which would
	// land in the black hole again.
	errc := make(chan error, 1)
	go func() {
		_, _, err := fx.get(t, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}})
		errc <- err
	}()
	waitFor(t, func() bool { return fx.f.Count("GET", "/blobs/") == 2 })
	fx.f.ReleaseHeld()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("released request succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReleaseHeld did not release the request")
	}

	fx.f.Reset()
	fx.requireIntact(t)
}

func TestFaultDelay(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: Delay(300 * time.Millisecond)})

	start := time.Now()
	fx.requireIntact(t)
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Fatalf("answered after %v, want >= 300ms", elapsed)
	}

	// A client giving up during the delay must not get a response.
	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: Delay(time.Minute)})
	c := fx.r.HTTPClient()
	c.Timeout = 100 * time.Millisecond
	if _, _, err := fx.get(t, c); err == nil {
		t.Fatal("delayed request succeeded despite client timeout")
	}
	fx.requireIntact(t)
}

// Over TLS the client negotiates HTTP/2, where connections cannot be
// hijacked and aborts reset streams instead.
func TestFaultsOverTLS(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{TLS: true})

	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: Truncate(1000)})
	resp, body, err := fx.get(t, nil)
	if resp == nil || err == nil || len(body) > 1000 {
		t.Fatalf("truncate: %d bytes, %v", len(body), err)
	}
	if resp.ProtoMajor != 2 {
		t.Logf("note: negotiated %s", resp.Proto)
	}

	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: CloseMidStream(1000)})
	if _, body, err := fx.get(t, nil); err == nil || len(body) > 1000 {
		t.Fatalf("close mid-stream: %d bytes, %v", len(body), err)
	}

	fx.f.Add(Rule{PathContains: "/blobs/", Times: 1, Action: FlipByte(0)})
	if _, body, err := fx.get(t, nil); err != nil || len(body) != len(fx.blob) || sha(body) == fx.digest {
		t.Fatalf("flip: %d bytes, %v", len(body), err)
	}
	fx.requireIntact(t)
}

func TestFaultRulesAndCounters(t *testing.T) {
	t.Parallel()
	fx := newFaultFixture(t, RegistryOptions{})
	f := fx.f

	// Method filter: a HEAD-only rule leaves GETs alone.
	removeHead := f.Add(Rule{Method: http.MethodHead, PathContains: "/blobs/", Action: Status(http.StatusNotFound, nil)})
	fx.requireIntact(t)
	head, err := fx.r.HTTPClient().Head(fx.url)
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD: %d", head.StatusCode)
	}
	removeHead()
	removeHead() // harmless twice

	// First match wins; a removed rule no longer applies.
	remove503 := f.Add(Rule{PathContains: fx.digest, Action: Status(http.StatusServiceUnavailable, nil)})
	f.Add(Rule{PathContains: "/blobs/", Action: Status(http.StatusBadGateway, nil)})
	if resp, _, _ := fx.get(t, nil); resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("want 503 from the first rule, got %v", resp)
	}
	remove503()
	if resp, _, _ := fx.get(t, nil); resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("want 502 from the second rule, got %v", resp)
	}
	f.Reset()

	// Times is exact under concurrency.
	f.ResetCounts()
	f.Add(Rule{PathContains: "/blobs/", Times: 5, Action: Status(http.StatusServiceUnavailable, nil)})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			resp, _, err := fx.get(t, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[http.StatusServiceUnavailable] != 5 || codes[http.StatusOK] != 15 {
		t.Fatalf("status counts %v, want 5x503 and 15x200", codes)
	}

	if n := f.Count(http.MethodGet, fx.digest); n != 20 {
		t.Fatalf("Count GET = %d, want 20", n)
	}
	if n := f.Count("", "/blobs/"); n != 20 {
		t.Fatalf("Count any = %d, want 20", n)
	}
	if n := f.Count(http.MethodHead, ""); n != 0 {
		t.Fatalf("Count HEAD = %d, want 0", n)
	}
	want := "GET /v2/faults/app/blobs/" + fx.digest
	if reqs := f.Requests(); len(reqs) != 20 || reqs[0] != want {
		t.Fatalf("Requests() = %v, want 20 x %q", reqs, want)
	}
	f.ResetCounts()
	if n := f.Count("", ""); n != 0 || len(f.Requests()) != 0 {
		t.Fatalf("after ResetCounts: %d", n)
	}
}
