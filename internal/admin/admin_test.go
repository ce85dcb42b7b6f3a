package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// backend records which actions ran.
type backend struct {
	mu     sync.Mutex
	calls  []string
	ready  bool
	status Status
}

func (b *backend) record(s string) {
	b.mu.Lock()
	b.calls = append(b.calls, s)
	b.mu.Unlock()
}

func (b *backend) ran() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

func (b *backend) Resolve(context.Context, string) (Resolution, error) { return Resolution{}, nil }
func (b *backend) Purge(_ context.Context, image string) error {
	b.record("purge " + image)
	return nil
}
func (b *backend) Ready() (bool, any) { return b.ready, map[string]bool{"ready": b.ready} }
func (b *backend) Status(context.Context) (Status, error) {
	return b.status, nil
}
func (b *backend) Recycle(_ context.Context, upstream string) error {
	b.record("recycle " + upstream)
	if upstream == "nope" {
		return &StatusError{Status: http.StatusNotFound, Err: errors.New("no upstream named nope")}
	}
	return nil
}
func (b *backend) GC(_ context.Context, upstream string, dryRun bool) (any, error) {
	if dryRun {
		b.record("gc --dry-run " + upstream)
	} else {
		b.record("gc " + upstream)
	}
	return map[string]any{"upstream": upstream, "dry_run": dryRun}, nil
}

// newRequest is a request as curl sends it to the default admin listener;
// httptest's own default Host, example.com, is refused without a token.
func newRequest(method, target string) *http.Request {
	req := httptest.NewRequest(method, target, nil)
	req.Host = "127.0.0.1:9090"
	return req
}

func do(t *testing.T, h http.Handler, method, target, auth string) (int, map[string]any) {
	t.Helper()
	req := newRequest(method, target)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: Content-Type %q, want JSON", method, target, ct)
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s %s: body %q is not JSON: %v", method, target, rec.Body.String(), err)
	}
	return rec.Code, body
}

var mutating = []string{
	"/api/v1/purge?image=docker.io/library/busybox:1",
	"/api/v1/recycle?upstream=docker.io",
	"/api/v1/gc?upstream=docker.io",
	"/api/v1/gc?upstream=docker.io&dry_run=true",
}

func TestRefusedActionsNeverRun(t *testing.T) {
	cases := []struct {
		name     string
		opts     Options
		auth     string
		want     int
		wantAuth bool // a WWW-Authenticate challenge is sent
	}{
		{"no header", Options{Token: "s3cret", Loopback: true}, "", http.StatusUnauthorized, true},
		{"basic auth", Options{Token: "s3cret", Loopback: true}, "Basic czNjcmV0Og==", http.StatusUnauthorized, true},
		{"wrong token", Options{Token: "s3cret", Loopback: true}, "Bearer s3cre", http.StatusForbidden, false},
		{"token with a suffix", Options{Token: "s3cret", Loopback: true}, "Bearer s3cretX", http.StatusForbidden, false},
		{"no token configured, not loopback", Options{Loopback: false}, "", http.StatusForbidden, false},
		{"no token configured, not loopback, a token sent", Options{Loopback: false}, "Bearer anything", http.StatusForbidden, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &backend{}
			c.opts.Backend = b
			h := Handler(c.opts)
			for _, target := range mutating {
				code, body := do(t, h, http.MethodPost, target, c.auth)
				if code != c.want {
					t.Errorf("POST %s: %d, want %d", target, code, c.want)
				}
				if msg, _ := body["error"].(string); msg == "" {
					t.Errorf("POST %s: refusal without an error message: %v", target, body)
				}
			}
			if ran := b.ran(); len(ran) != 0 {
				t.Errorf("refused requests ran: %v", ran)
			}
		})
	}
}

func TestAllowedActionsRun(t *testing.T) {
	for _, o := range []Options{{Token: "s3cret"}, {Loopback: true}} {
		b := &backend{}
		o.Backend = b
		h := Handler(o)
		auth := ""
		if o.Token != "" {
			auth = "Bearer " + o.Token
		}
		for _, target := range mutating {
			if code, body := do(t, h, http.MethodPost, target, auth); code != http.StatusOK {
				t.Errorf("token %q loopback %v: POST %s: %d %v", o.Token, o.Loopback, target, code, body)
			}
		}
		want := "[purge docker.io/library/busybox:1 recycle docker.io gc docker.io gc --dry-run docker.io]"
		if got := strings.Join(b.ran(), " "); "["+got+"]" != want {
			t.Errorf("ran %v, want %s", b.ran(), want)
		}
	}
}

func TestActionArguments(t *testing.T) {
	b := &backend{}
	h := Handler(Options{Backend: b, Loopback: true})
	cases := []struct {
		target string
		want   int
	}{
		{"/api/v1/recycle", http.StatusBadRequest},
		{"/api/v1/gc?upstream=", http.StatusBadRequest},
		{"/api/v1/gc?upstream=docker.io&dry_run=maybe", http.StatusBadRequest},
		{"/api/v1/recycle?upstream=nope", http.StatusNotFound},
	}
	for _, c := range cases {
		if code, body := do(t, h, http.MethodPost, c.target, ""); code != c.want {
			t.Errorf("POST %s: %d %v, want %d", c.target, code, body, c.want)
		}
	}
	if code, _ := do(t, h, http.MethodGet, "/api/v1/recycle?upstream=docker.io", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET on an action: %d, want 405", code)
	}
	if ran := b.ran(); len(ran) != 1 || ran[0] != "recycle nope" {
		t.Errorf("ran %v, want only the recycle of an unknown upstream to reach the backend", ran)
	}
}

func TestReadyz(t *testing.T) {
	for _, ready := range []bool{true, false} {
		h := Handler(Options{Backend: &backend{ready: ready}})
		code, body := do(t, h, http.MethodGet, "/readyz", "")
		want := http.StatusOK
		if !ready {
			want = http.StatusServiceUnavailable
		}
		if code != want || body["ready"] != ready {
			t.Errorf("ready=%v: %d %v, want %d", ready, code, body, want)
		}
	}
}

func TestStatusPageEscapesAndShowsEveryUpstream(t *testing.T) {
	ratio := 0.75
	stored := int64(3 << 20)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	b := &backend{status: Status{Time: now, Ready: true, Upstreams: []UpstreamStatus{
		{Name: "docker.io", Listen: "127.0.0.1:5000", Remote: "https://registry-1.docker.io", Serving: true,
			State: "reachable", Since: now.Add(-time.Hour), HitRatio: &ratio, StoredBytes: &stored,
			ServedBytes: ServedBytes{Cache: 1 << 30, Upstream: 512},
			LastRecycle: &Recycle{At: now.Add(-5 * time.Minute), Reason: "interval"}},
		{Name: `<script>alert(1)</script>`, Listen: "[::]:5001", Remote: `https://x"onmouseover="alert(1)`,
			State: "down", Since: now.Add(-30 * time.Second), LastError: "<b>refused</b>"},
	}}}
	h := Handler(Options{Backend: b})
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	page := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("status page: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="10">`,
		"docker.io", "5000", "https://registry-1.docker.io", "reachable", "75.0 %", "3.0 MiB", "1.0 GiB", "512 B",
		"5 min ago", "interval", "none since start",
		"5001", "down", "&lt;script&gt;", "&lt;b&gt;refused&lt;/b&gt;",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script>", `"onmouseover="`, "<b>refused"} {
		if strings.Contains(page, bad) {
			t.Errorf("status page carries %q unescaped", bad)
		}
	}
	for _, ext := range []string{"http://", "src=", "<link", "@import"} {
		if strings.Contains(strings.ReplaceAll(page, "https://registry-1.docker.io", ""), ext) {
			t.Errorf("status page refers to something external (%q)", ext)
		}
	}
}
