package upstream_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// A blob body that stops arriving ends with a timeout once no byte has come
// for the upstream timeout; one that keeps arriving, however long it takes
// in all, and one the reader pauses on, are read to the end.
func TestIdleBodyTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusOK)
		switch r.URL.Path {
		case "/v2/team/stalls/blobs/" + digest.FromString("x").String():
			_, _ = io.WriteString(w, "12345")
			w.(http.Flusher).Flush()
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		case "/v2/team/trickles/blobs/" + digest.FromString("x").String():
			// 10 bytes over 1 s: longer than the timeout in all, never
			// idle that long.
			for i := range 10 {
				_, _ = io.WriteString(w, string(rune('0'+i)))
				w.(http.Flusher).Flush()
				time.Sleep(timeout / 3)
			}
		default:
			_, _ = io.WriteString(w, "0123456789")
		}
	}))
	t.Cleanup(srv.Close)
	cl, _ := client(t, srv.URL, upstream.Options{Timeout: timeout})
	get := func(repo string) *http.Response {
		t.Helper()
		resp, err := cl.GetBlob(context.Background(), repo, digest.FromString("x"))
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}

	stalled := get("team/stalls")
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(stalled.Body)
		done <- result{b, err}
	}()
	var b []byte
	var err error
	select {
	case r := <-done:
		b, err = r.body, r.err
	case <-time.After(10 * timeout):
		stalled.Body.Close()
		t.Fatalf("stalled body still read after %v, want it ended after about %v", 10*timeout, timeout)
	}
	if c := upstream.CauseOf(err); c != upstream.CauseTimeout || string(b) != "12345" {
		t.Errorf("stalled body: %q, %v (cause %s); want the first 5 bytes and a timeout", b, err, c)
	}
	if errors.Is(err, context.Canceled) {
		t.Error("the idle timeout reads as a cancellation, which a caller takes for its client leaving")
	}

	if b, err := io.ReadAll(get("team/trickles").Body); err != nil || string(b) != "0123456789" {
		t.Errorf("trickling body: %q, %v; want all of it", b, err)
	}

	// Only time inside Read counts: a fill waiting on its slowest client
	// is not the upstream being idle.
	resp := get("team/whole")
	time.Sleep(3 * timeout)
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "0123456789" {
		t.Errorf("body read after a pause: %q, %v; want all of it", b, err)
	}
}
