package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// failing answers every call with err.
type failing struct {
	backend
	err error
}

func (f *failing) Resolve(context.Context, string) (Resolution, error) { return Resolution{}, f.err }
func (f *failing) Purge(context.Context, string) error                 { return f.err }
func (f *failing) Recycle(context.Context, string) error               { return f.err }
func (f *failing) GC(context.Context, string, bool) (any, error)       { return nil, f.err }
func (f *failing) Status(context.Context) (Status, error)              { return Status{}, f.err }

const internalDetail = "open /var/lib/multiproxy/docker.io/docker/registry/v2/repositories/library/x/_manifests/tags/1/current/link: no such file or directory"

func TestErrorsKeepInternalsFromClients(t *testing.T) {
	endpoints := []struct{ method, target string }{
		{http.MethodGet, "/api/v1/resolve?image=docker.io/library/x:1"},
		{http.MethodPost, "/api/v1/purge?image=docker.io/library/x:1"},
		{http.MethodPost, "/api/v1/recycle?upstream=docker.io"},
		{http.MethodPost, "/api/v1/gc?upstream=docker.io"},
		{http.MethodGet, "/api/v1/status"},
	}
	cause := errors.New(internalDetail)
	tests := []struct {
		name     string
		err      error
		want     int
		wantMsg  string
		wantCode string
	}{
		{"plain error", fmt.Errorf("storage: %w", cause), http.StatusInternalServerError, "internal error", "UNKNOWN"},
		{"status error", &StatusError{Status: http.StatusNotFound, Code: CodeManifestUnknown, Err: errors.New("docker.io/library/x:1 is not cached")},
			http.StatusNotFound, "docker.io/library/x:1 is not cached", "MANIFEST_UNKNOWN"},
		// A StatusError wrapped in internal detail: only its own message goes out.
		{"wrapped status error", fmt.Errorf("%s: %w", internalDetail, &StatusError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Err: errors.New("upstream unreachable")}),
			http.StatusServiceUnavailable, "upstream unreachable", "UNAVAILABLE"},
		{"status error without a code", &StatusError{Status: http.StatusBadRequest, Err: errors.New("bad image")}, http.StatusBadRequest, "bad image", ""},
		{"status error with a nonsense status", &StatusError{Status: 200, Err: errors.New("odd")}, http.StatusInternalServerError, "odd", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			h := Handler(Options{Backend: &failing{err: tc.err}, Loopback: true,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			for _, e := range endpoints {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, newRequest(e.method, e.target))
				body := rec.Body.String()
				if rec.Code != tc.want {
					t.Errorf("%s %s: %d, want %d", e.method, e.target, rec.Code, tc.want)
				}
				if strings.Contains(body, "/var/lib") || strings.Contains(body, "no such file") || strings.Contains(body, "storage:") {
					t.Errorf("%s %s: body leaks internals: %s", e.method, e.target, body)
				}
				var got errorBody
				if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
					t.Fatalf("%s %s: body %q: %v", e.method, e.target, body, err)
				}
				if !strings.Contains(got.Error, tc.wantMsg) {
					t.Errorf("%s %s: error %q, want it to say %q", e.method, e.target, got.Error, tc.wantMsg)
				}
				switch {
				case tc.wantCode == "" && len(got.Errors) != 0:
					t.Errorf("%s %s: OCI errors %+v without a code", e.method, e.target, got.Errors)
				case tc.wantCode != "" && (len(got.Errors) != 1 || got.Errors[0].Code != tc.wantCode || got.Errors[0].Message == ""):
					t.Errorf("%s %s: OCI errors %+v, want one with code %s", e.method, e.target, got.Errors, tc.wantCode)
				}
			}
			// What the client was not told is in the log.
			if tc.want == http.StatusInternalServerError && tc.wantCode == "UNKNOWN" && !strings.Contains(logs.String(), "no such file") {
				t.Errorf("the cause is not logged:\n%s", logs.String())
			}
		})
	}
}

func TestStatusPageErrorKeepsInternals(t *testing.T) {
	var logs bytes.Buffer
	h := Handler(Options{Backend: &failing{err: errors.New(internalDetail)}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "/var/lib") {
		t.Errorf("status page with a failing backend: %d %s", rec.Code, rec.Body.String())
	}
	if !strings.Contains(logs.String(), "/var/lib") {
		t.Errorf("the cause is not logged:\n%s", logs.String())
	}
}

func TestStatusPageShowsDegraded(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	reason := "storage: commit failing since 2030-01-02T03:00:00Z"
	b := &backend{status: Status{Time: now, Ready: false, Upstreams: []UpstreamStatus{
		{Name: "docker.io", Listen: "127.0.0.1:5000", Serving: true, State: "degraded", Since: now.Add(-4 * time.Minute), Reason: reason},
	}}}
	rec := httptest.NewRecorder()
	Handler(Options{Backend: b}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	page := rec.Body.String()
	for _, want := range []string{`<span class="state degraded">degraded</span>`, reason, "not ready", ".degraded {"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}
