package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/warm"
)

// warmer is a backend that warms: it sends a plan, waits until the test
// has received it, then ends. A warm of "refused" is refused before any
// event.
type warmer struct {
	*backend
	proceed chan struct{}
}

func (w *warmer) Warm(ctx context.Context, req warm.Request, emit func(warm.Event)) error {
	if req.Images[0] == "refused" {
		return &StatusError{Status: http.StatusBadRequest, Err: errors.New("refused for the test")}
	}
	emit(warm.Event{Event: warm.EventPlan, Image: req.Images[0], Upstream: "docker.io"})
	select {
	case <-w.proceed:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return errors.New("the client never saw the plan")
	}
	emit(warm.Event{Event: warm.EventDone, Image: req.Images[0], Upstream: "docker.io", Digest: "sha256:abc", Bytes: 10, Blobs: 2})
	emit(warm.Event{Event: warm.EventSummary, Cached: 1, Bytes: 10})
	return nil
}

// Each event reaches the client as it happens, not when the warm ends,
// and the Client hands them over in order, the summary last.
func TestWarmStreamsEachEvent(t *testing.T) {
	w := &warmer{backend: &backend{}, proceed: make(chan struct{})}
	srv := httptest.NewServer(Handler(Options{Backend: w, Token: "t"}))
	defer srv.Close()
	c := Client{Base: srv.URL, Token: "t"}

	var got []warm.Event
	err := c.Warm(context.Background(), warm.Request{Images: []string{"docker.io/library/nginx:1.25"}}, func(e warm.Event) {
		if len(got) == 0 {
			close(w.proceed) // the plan arrived while the warm still runs
		}
		got = append(got, e)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Event != warm.EventPlan || got[1].Digest != "sha256:abc" || got[2].Event != warm.EventSummary || got[2].Cached != 1 {
		t.Errorf("events %+v", got)
	}

	err = c.Warm(context.Background(), warm.Request{Images: []string{"refused"}}, func(warm.Event) { t.Error("an event of a refused warm") })
	if err == nil || !strings.Contains(err.Error(), "400: refused for the test") {
		t.Errorf("refused warm: %v", err)
	}
	err = Client{Base: srv.URL}.Warm(context.Background(), warm.Request{Images: []string{"x"}}, func(warm.Event) {})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("warm without the token: %v", err)
	}
}

// A backend that cannot warm answers 404, as a server without the
// endpoint would; a tokenless warm from a web page is refused like every
// other action.
func TestWarmWithoutWarmerAndCrossSite(t *testing.T) {
	h := Handler(Options{Backend: &backend{}, Loopback: true})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, withBody(newRequest(http.MethodPost, "/api/v1/warm"), `{"images": ["a"]}`))
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), `"error"`) {
		t.Errorf("backend without Warm: %d %s", rec.Code, rec.Body)
	}

	w := &warmer{backend: &backend{}, proceed: make(chan struct{})}
	close(w.proceed)
	req := withBody(newRequest(http.MethodPost, "/api/v1/warm"), `{"images": ["a"]}`)
	req.Header.Set("Origin", "https://evil.example")
	rec = httptest.NewRecorder()
	Handler(Options{Backend: w, Loopback: true}).ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("cross-site warm: %d %s", rec.Code, rec.Body)
	}
}

func withBody(r *http.Request, body string) *http.Request {
	r.Body = io.NopCloser(strings.NewReader(body))
	return r
}
