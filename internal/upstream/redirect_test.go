package upstream_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// blobStore is a second host (a CDN, an object store) that serves one
// blob, recording what it was sent.
func blobStore(t *testing.T, ln net.Listener, body string) (*httptest.Server, *seen) {
	t.Helper()
	var got seen
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.add(r)
		_, _ = io.WriteString(w, body)
	}))
	if ln != nil {
		srv.Listener.Close()
		srv.Listener = ln
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &got
}

// redirecting is a registry that answers every request with a redirect
// to location, with status.
func redirecting(t *testing.T, status int, location func(r *http.Request) string) (*httptest.Server, *seen) {
	t.Helper()
	var got seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.add(r)
		if loc := location(r); loc != "" {
			w.Header().Set("Location", loc)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

func getBlob(c *upstream.Client) (string, error) {
	resp, err := c.GetBlob(context.Background(), "team/a", digest.FromString("x"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// A blob redirected to another host is fetched there, with the Range the
// caller asked for but never the registry's Authorization, which a
// presigned URL refuses and which is not the other host's business.
func TestRedirectIsFollowedWithoutAuthorization(t *testing.T) {
	for _, status := range []int{301, 302, 303, 307, 308} {
		store, stored := blobStore(t, nil, "the bytes")
		// The registry wants basic credentials first, so that there is
		// an Authorization to withhold.
		reg := httptest.NewServer(withBasic(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Location", store.URL+"/blob?X-Amz-Signature=sig")
			w.WriteHeader(status)
		})))
		t.Cleanup(reg.Close)
		cl, redirects := client(t, reg.URL, upstream.Options{Username: "u", Password: "p"})
		resp, err := cl.GetBlobFrom(context.Background(), "team/a", digest.FromString("x"), 4)
		if err != nil {
			t.Fatalf("%d: %v", status, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "the bytes" {
			t.Errorf("%d: body %q", status, b)
		}
		reqs := stored.all()
		if len(reqs) != 1 {
			t.Fatalf("%d: the store got %d requests, want 1", status, len(reqs))
		}
		if a := reqs[0].Header.Get("Authorization"); a != "" {
			t.Errorf("%d: the store was sent Authorization %q", status, a)
		}
		if r := reqs[0].Header.Get("Range"); r != "bytes=4-" {
			t.Errorf("%d: the store was sent Range %q, want bytes=4-", status, r)
		}
		if reqs[0].URL.Query().Get("X-Amz-Signature") != "sig" {
			t.Errorf("%d: the store was sent %s, without the Location's query", status, reqs[0].URL)
		}
		if redirects.Load() != 1 {
			t.Errorf("%d: %d redirects counted, want 1", status, redirects.Load())
		}
	}
}

// withBasic answers a request without Authorization with a basic challenge.
func withBasic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="reg"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// A redirect that goes nowhere is an error after a bounded number of hops,
// and one that names nothing usable is an error at once; neither hangs.
func TestBadRedirectsEnd(t *testing.T) {
	t.Run("a loop ends after ten hops", func(t *testing.T) {
		reg, got := redirecting(t, http.StatusFound, func(r *http.Request) string { return r.URL.Path })
		cl, _ := client(t, reg.URL, upstream.Options{})
		_, err := getBlob(cl)
		if ue := asError(t, err); ue.Cause != upstream.CauseOther || ue.Status != http.StatusFound {
			t.Errorf("loop: cause %s, status %d; want other, 302", ue.Cause, ue.Status)
		}
		if n := len(got.all()); n != 11 {
			t.Errorf("loop: %d requests sent, want 11 (the first and ten hops)", n)
		}
	})
	for name, loc := range map[string]string{
		"no Location":    "",
		"an unparsable":  "http://[::1%zz/",
		"another scheme": "ftp://127.0.0.1/blob",
	} {
		t.Run(name, func(t *testing.T) {
			reg, got := redirecting(t, http.StatusTemporaryRedirect, func(*http.Request) string { return loc })
			cl, _ := client(t, reg.URL, upstream.Options{})
			_, err := getBlob(cl)
			if ue := asError(t, err); ue.Status != http.StatusTemporaryRedirect || ue.Cause != upstream.CauseOther {
				t.Errorf("Location %q: cause %s, status %d; want other, 307", loc, ue.Cause, ue.Status)
			}
			if n := len(got.all()); n != 1 {
				t.Errorf("Location %q: %d requests sent, want 1", loc, n)
			}
		})
	}
}

// A redirect to where the hop policy does not let the cache go is refused
// before anything is sent there, reported with its reason, and answered as
// an unreachable upstream.
func TestRedirectRefusedByTheHopPolicy(t *testing.T) {
	type refusal struct{ host, reason string }
	var mu sync.Mutex
	var refused []refusal
	onRefused := func(host, reason string) {
		mu.Lock()
		refused = append(refused, refusal{host, reason})
		mu.Unlock()
	}
	check := func(t *testing.T, err error, wantReason string) {
		t.Helper()
		if ue := asError(t, err); ue.Cause != upstream.CauseUnreachable {
			t.Errorf("cause %s (%v), want unreachable", ue.Cause, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(refused) != 1 || refused[0].reason != wantReason {
			t.Errorf("refusals reported %v, want one %s", refused, wantReason)
		}
		for _, r := range refused {
			if strings.Contains(r.host, "sig") {
				t.Errorf("a refusal names %q, query and all", r.host)
			}
		}
		refused = nil
	}

	t.Run("cloud metadata", func(t *testing.T) {
		// 169.254.169.254 is never dialed: the dialer refuses the address
		// before connecting, so this test sends nothing off the machine.
		reg, _ := redirecting(t, http.StatusTemporaryRedirect, func(*http.Request) string {
			return "http://169.254.169.254/latest/meta-data/?sig=1"
		})
		cl, _ := client(t, reg.URL, upstream.Options{Refused: onRefused})
		_, err := getBlob(cl)
		check(t, err, upstream.RefusedLinkLocal)
	})

	t.Run("outside allow_hops", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		store, stored := blobStore(t, ln, "bytes")
		reg, _ := redirecting(t, http.StatusTemporaryRedirect, func(*http.Request) string { return store.URL + "/blob" })
		cl, _ := client(t, reg.URL, upstream.Options{Refused: onRefused,
			AllowHops: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
		_, err = getBlob(cl)
		check(t, err, upstream.RefusedNotAllowed)
		if n := len(stored.all()); n != 0 {
			t.Errorf("the refused hop got %d requests", n)
		}
		// Inside allow_hops, the same hop is followed.
		cl, _ = client(t, reg.URL, upstream.Options{Refused: onRefused,
			AllowHops: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		if body, err := getBlob(cl); err != nil || body != "bytes" {
			t.Errorf("hop inside allow_hops: %q, %v", body, err)
		}
	})

	t.Run("https remote to plain http", func(t *testing.T) {
		store, stored := blobStore(t, nil, "bytes")
		reg := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Location", store.URL+"/blob")
			w.WriteHeader(http.StatusTemporaryRedirect)
		}))
		t.Cleanup(reg.Close)
		cl, _ := client(t, reg.URL, upstream.Options{CAFile: caFile(t, reg), Refused: onRefused})
		_, err := getBlob(cl)
		check(t, err, upstream.RefusedDowngrade)
		if n := len(stored.all()); n != 0 {
			t.Errorf("the plain-HTTP hop got %d requests", n)
		}
	})
}
