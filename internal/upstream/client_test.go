package upstream_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// client builds the upstream client of reg as multiproxy would, counting
// the redirects it follows.
func client(t *testing.T, remote string, o upstream.Options) (*upstream.Client, *atomic.Int64) {
	t.Helper()
	var redirects atomic.Int64
	o.Name, o.Remote = "test", remote
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	o.UserAgent = "multiproxy/test"
	o.Redirected = func() { redirects.Add(1) }
	c, err := upstream.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, &redirects
}

func readBlob(t *testing.T, c *upstream.Client, repo string, d digest.Digest) (string, error) {
	t.Helper()
	resp, err := c.GetBlob(context.Background(), repo, d)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func causeOf(t *testing.T, err error) upstream.Cause {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not an *upstream.Error", err, err)
	}
	return ue.Cause
}

// Each behaviour of a real registry, one small case: what the client gets.
func TestClientAgainstRealUpstreamBehaviours(t *testing.T) {
	t.Run("blob redirected to a CDN that refuses Authorization", func(t *testing.T) {
		up := ts.Profile{Name: "token-cdn", Token: true, CDN: true}.Start(t)
		img := up.Push(t, "library/app:1", 1, 64<<10)
		layer := digest.Digest(ts.LayerDigests(t, img)[0])
		c, redirects := client(t, up.URL, upstream.Options{})
		got, err := readBlob(t, c, "library/app", layer)
		if err != nil || got != layer.String() {
			t.Fatalf("blob through the CDN: %s, %v", got, err)
		}
		if up.CDN.AuthorizationSeen() != 0 {
			t.Error("the registry's token was forwarded to the CDN")
		}
		if redirects.Load() != 1 {
			t.Errorf("%d redirects counted, want 1", redirects.Load())
		}
		if n, err := c.HeadBlob(context.Background(), "library/app", layer); err != nil || n <= 0 {
			t.Errorf("HEAD of a redirected blob: %d, %v", n, err)
		}
	})

	t.Run("the whole API redirected to a backend with its own realm", func(t *testing.T) {
		up := ts.Profile{Name: "redirected-api", Token: true, CDN: true, Front: true, FrontPrefix: "backend/images"}.Start(t)
		img := up.Push(t, "pause:3.9", 1, 16<<10)
		up.Tokens.ResetCounts() // the push's own token requests
		c, _ := client(t, up.URL, upstream.Options{Username: "nobody", Password: "secret"})
		info, err := c.HeadManifest(context.Background(), "pause", "3.9")
		if err != nil || info.Digest.String() != ts.Digest(t, img) {
			t.Fatalf("HEAD through the front: %+v, %v", info, err)
		}
		body, _, err := c.GetManifest(context.Background(), "pause", info.Digest.String())
		if err != nil || len(body) == 0 {
			t.Fatalf("GET through the front: %v", err)
		}
		got, err := readBlob(t, c, "pause", digest.Digest(ts.LayerDigests(t, img)[0]))
		if err != nil || got != ts.LayerDigests(t, img)[0] {
			t.Fatalf("blob through front and CDN: %s, %v", got, err)
		}
		// Our credentials are the front's business only: the backend,
		// another party, gets anonymous token requests.
		if len(up.Tokens.Requests()) == 0 {
			t.Fatal("the backend's realm was never asked for a token")
		}
		for _, r := range up.Tokens.Requests() {
			if r.Credentials {
				t.Errorf("the backend's realm was sent credentials (account %q)", r.Account)
			}
		}
	})

	t.Run("one token per repository, reused", func(t *testing.T) {
		up := ts.Profile{Name: "token", Token: true}.Start(t)
		up.Push(t, "team/a:1", 1, 1024)
		up.Push(t, "team/b:1", 1, 1024)
		c, _ := client(t, up.URL, upstream.Options{})
		up.Tokens.ResetCounts()
		for range 3 {
			for _, repo := range []string{"team/a", "team/b"} {
				if _, err := c.HeadManifest(context.Background(), repo, "1"); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n := up.Tokens.Count(); n != 2 {
			t.Errorf("6 requests over 2 repositories fetched %d tokens, want 2", n)
		}
		for _, r := range up.Tokens.Requests() {
			if len(r.Scopes) != 1 || !strings.HasSuffix(r.Scopes[0], ":pull") {
				t.Errorf("token requested for %v, want one repository's pull scope", r.Scopes)
			}
		}
	})

	t.Run("wrong credentials are an auth failure, not a missing image", func(t *testing.T) {
		up := ts.Profile{Name: "private", Token: true, Username: "me", Password: "right"}.Start(t)
		up.Push(t, "team/a:1", 1, 1024)
		c, _ := client(t, up.URL, upstream.Options{Username: "me", Password: "wrong"})
		_, err := c.HeadManifest(context.Background(), "team/a", "1")
		if cause := causeOf(t, err); cause != upstream.CauseAuth {
			t.Errorf("wrong password: cause %s, want %s", cause, upstream.CauseAuth)
		}
		c, _ = client(t, up.URL, upstream.Options{Username: "me", Password: "right"})
		if _, err := c.HeadManifest(context.Background(), "team/a", "1"); err != nil {
			t.Errorf("right password: %v", err)
		}
	})

	t.Run("a redirect loop ends after 10 hops", func(t *testing.T) {
		up := ts.Profile{Name: "plain"}.Start(t)
		img := up.Push(t, "team/a:1", 1, 1024)
		layer := ts.LayerDigests(t, img)[0]
		up.Faults.Add(ts.Rule{PathContains: "/blobs/", Action: func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			http.Redirect(w, r, r.URL.Path, http.StatusTemporaryRedirect)
		}})
		c, redirects := client(t, up.URL, upstream.Options{})
		_, err := c.GetBlob(context.Background(), "team/a", digest.Digest(layer))
		if err == nil {
			t.Fatal("an endless redirect loop succeeded")
		}
		if n := up.Faults.Count("GET", "/blobs/"); n != 11 {
			t.Errorf("%d requests in the loop, want 11 (the first and 10 redirects)", n)
		}
		if redirects.Load() != 10 {
			t.Errorf("%d redirects counted, want 10", redirects.Load())
		}
	})

	t.Run("a redirect to another scheme is refused", func(t *testing.T) {
		up := ts.Profile{Name: "plain"}.Start(t)
		img := up.Push(t, "team/a:1", 1, 1024)
		up.Faults.Add(ts.Rule{PathContains: "/blobs/", Action: func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
			w.Header().Set("Location", "file:///etc/passwd")
			w.WriteHeader(http.StatusFound)
		}})
		c, _ := client(t, up.URL, upstream.Options{})
		if _, err := c.GetBlob(context.Background(), "team/a", digest.Digest(ts.LayerDigests(t, img)[0])); err == nil {
			t.Fatal("followed a redirect to file://")
		}
	})

	t.Run("429 keeps Retry-After", func(t *testing.T) {
		up := ts.Profile{Name: "plain"}.Start(t)
		up.Push(t, "team/a:1", 1, 1024)
		up.Faults.Add(ts.Rule{PathContains: "/manifests/", Action: ts.Status(http.StatusTooManyRequests, map[string]string{"Retry-After": "30"})})
		c, _ := client(t, up.URL, upstream.Options{})
		_, err := c.HeadManifest(context.Background(), "team/a", "1")
		var ue *upstream.Error
		if !errors.As(err, &ue) || ue.Cause != upstream.CauseRateLimited || ue.Header.Get("Retry-After") != "30" {
			t.Errorf("429: %v", err)
		}
	})

	t.Run("5xx is a server error", func(t *testing.T) {
		up := ts.Profile{Name: "plain"}.Start(t)
		up.Push(t, "team/a:1", 1, 1024)
		up.Faults.Add(ts.Rule{PathContains: "/manifests/", Action: ts.Status(http.StatusBadGateway, nil)})
		c, _ := client(t, up.URL, upstream.Options{})
		_, err := c.HeadManifest(context.Background(), "team/a", "1")
		if cause := causeOf(t, err); cause != upstream.CauseServerError {
			t.Errorf("502: cause %s", cause)
		}
	})

	t.Run("a CDN that hangs before headers is a timeout", func(t *testing.T) {
		var hang atomic.Bool
		reg := ts.StartRegistry(t, ts.RegistryOptions{Token: true, CDN: true, WrapCDN: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if hang.Load() {
					<-r.Context().Done()
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		img := ts.PushImage(t, reg, "team/a:1", 1, 1024)
		hang.Store(true)
		c, _ := client(t, reg.URL(), upstream.Options{Timeout: 300 * time.Millisecond})
		_, err := c.GetBlob(context.Background(), "team/a", digest.Digest(ts.LayerDigests(t, img)[0]))
		if cause := causeOf(t, err); cause != upstream.CauseTimeout {
			t.Errorf("hung CDN: cause %s (%v), want timeout", cause, err)
		}
	})

	t.Run("a body that stalls ends with a timeout", func(t *testing.T) {
		up := ts.Profile{Name: "plain"}.Start(t)
		img := up.Push(t, "team/a:1", 1, 512<<10)
		// The real answer's headers and first 100 KiB, then silence on
		// an open connection.
		up.Faults.Add(ts.Rule{PathContains: "/blobs/", Action: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes()[:100<<10])
			_ = http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}})
		c, _ := client(t, up.URL, upstream.Options{Timeout: 300 * time.Millisecond})
		_, err := readBlob(t, c, "team/a", digest.Digest(ts.LayerDigests(t, img)[0]))
		if cause := causeOf(t, err); cause != upstream.CauseTimeout {
			t.Errorf("stalled body: cause %s (%v), want timeout", cause, err)
		}
	})
}
