package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// answering is a registry that answers every request with one status (and
// headers), counting the requests it gets.
func answering(t *testing.T, status int, header http.Header) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.Add(1)
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"errors":[{"code":"X","message":"from the upstream"}]}`))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// asError is err as an *upstream.Error, or the test fails.
func asError(t *testing.T, err error) *upstream.Error {
	t.Helper()
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not an *upstream.Error", err, err)
	}
	return ue
}

// An upstream's status decides the cause the cache acts on: a 404 drops a
// cached tag, the others serve it stale; the status itself is kept for the
// client's answer, and Retry-After for a rate-limited client.
func TestStatusDecidesTheCause(t *testing.T) {
	for _, c := range []struct {
		status int
		want   upstream.Cause
	}{
		{http.StatusUnauthorized, upstream.CauseAuth}, // no challenge we can answer
		{http.StatusForbidden, upstream.CauseAuth},
		{http.StatusNotFound, upstream.CauseNotFound},
		{http.StatusTooManyRequests, upstream.CauseRateLimited},
		{http.StatusInternalServerError, upstream.CauseServerError},
		{http.StatusBadGateway, upstream.CauseServerError},
		{http.StatusServiceUnavailable, upstream.CauseServerError},
		{http.StatusBadRequest, upstream.CauseOther},
		{http.StatusTeapot, upstream.CauseOther},
	} {
		srv, n := answering(t, c.status, http.Header{"Retry-After": {"7"}, "X-Other": {"kept back"}})
		cl, _ := client(t, srv.URL, upstream.Options{})
		_, err := cl.HeadManifest(context.Background(), "team/a", "1")
		ue := asError(t, err)
		if ue.Cause != c.want || ue.Status != c.status {
			t.Errorf("%d: cause %s, status %d; want %s, %d", c.status, ue.Cause, ue.Status, c.want, c.status)
		}
		if !upstream.IsNotFound(err) != (c.want != upstream.CauseNotFound) {
			t.Errorf("%d: IsNotFound = %v", c.status, upstream.IsNotFound(err))
		}
		if ue.Header.Get("Retry-After") != "7" || ue.Header.Get("X-Other") != "" {
			t.Errorf("%d: headers passed on %v, want Retry-After only", c.status, ue.Header)
		}
		if n.Load() != 1 {
			t.Errorf("%d: %d requests sent, want 1 (nothing here retries)", c.status, n.Load())
		}
	}
}

// A transport failure is told apart from a slow upstream: both serve a
// cached tag stale, but the client and the metrics say which it was.
func TestTransportFailuresHaveTheirCause(t *testing.T) {
	t.Run("refused connection is unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		cl, _ := client(t, url, upstream.Options{})
		_, err := cl.HeadManifest(context.Background(), "team/a", "1")
		if ue := asError(t, err); ue.Cause != upstream.CauseUnreachable || ue.Status != 0 {
			t.Errorf("closed port: cause %s, status %d; want unreachable, 0", ue.Cause, ue.Status)
		}
	})
	t.Run("no headers within the timeout is a timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
		t.Cleanup(srv.Close)
		t.Cleanup(func() { close(release) })
		cl, _ := client(t, srv.URL, upstream.Options{Timeout: 200 * time.Millisecond})
		start := time.Now()
		_, err := cl.HeadManifest(context.Background(), "team/a", "1")
		if ue := asError(t, err); ue.Cause != upstream.CauseTimeout {
			t.Errorf("hung upstream: cause %s, want timeout", ue.Cause)
		}
		if errors.Is(err, context.Canceled) {
			t.Error("a missed deadline reads as a cancellation, which a caller takes for its client leaving")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("hung upstream answered after %v, want about the 200ms timeout", d)
		}
	})
	t.Run("an error not from here is other, a deadline a timeout", func(t *testing.T) {
		if c := upstream.CauseOf(errors.New("disk full")); c != upstream.CauseOther {
			t.Errorf("CauseOf(plain error) = %s", c)
		}
		if c := upstream.CauseOf(context.DeadlineExceeded); c != upstream.CauseTimeout {
			t.Errorf("CauseOf(deadline) = %s", c)
		}
	})
}

// A token service that refuses is an auth failure whatever its status: a
// 404 from it must not read as the image being gone, which would drop a
// cached tag.
func TestTokenServiceRefusalIsAuth(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusBadRequest, http.StatusUnauthorized} {
		var mux http.ServeMux
		srv := httptest.NewServer(&mux)
		mux.HandleFunc("/token", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })
		mux.HandleFunc("/v2/", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		})
		cl, _ := client(t, srv.URL, upstream.Options{})
		_, err := cl.HeadManifest(context.Background(), "team/a", "1")
		if ue := asError(t, err); ue.Cause != upstream.CauseAuth || ue.Status != status {
			t.Errorf("token service %d: cause %s, status %d; want auth, %d", status, ue.Cause, ue.Status, status)
		}
		srv.Close()
	}
	// Its overload is the upstream's, as for the registry itself.
	for status, want := range map[int]upstream.Cause{429: upstream.CauseRateLimited, 503: upstream.CauseServerError} {
		var mux http.ServeMux
		srv := httptest.NewServer(&mux)
		mux.HandleFunc("/token", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })
		mux.HandleFunc("/v2/", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token"`)
			w.WriteHeader(http.StatusUnauthorized)
		})
		cl, _ := client(t, srv.URL, upstream.Options{})
		_, err := cl.HeadManifest(context.Background(), "team/a", "1")
		if c := upstream.CauseOf(err); c != want {
			t.Errorf("token service %d: cause %s, want %s", status, c, want)
		}
		srv.Close()
	}
}
