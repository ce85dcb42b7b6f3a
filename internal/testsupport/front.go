package testsupport

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/reference"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// frontRoute splits "/v2/<name>/<rest>" as distribution's router does:
// the name pattern is greedy, so a name that itself contains "blobs" or
// "manifests" components still ends at the last route keyword.
var frontRoute = regexp.MustCompile(`^/v2/(` + reference.NameRegexp.String() + `)/(manifests/[^/]+|blobs/[^/]+|tags/list|referrers/[^/]+)$`)

// sessionTokenPattern is what a Front accepts as its own session token.
var sessionTokenPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// FrontOptions configures a Front.
type FrontOptions struct {
	// Target is the registry the API is redirected to.
	Target *Registry
	// Prefix is prepended to every repository name on Target, e.g.
	// "k8s-artifacts-prod/images" (the front's "pause" lives at
	// "k8s-artifacts-prod/images/pause" on Target).
	Prefix string
	// SessionToken makes GET /v2/ answer 401 with a Bearer challenge whose
	// realm is the front's own /token, which hands out opaque pull-session
	// tokens, as registry.k8s.io's archeio does for request correlation;
	// /v2/ answers 200 to a request carrying one. Without it /v2/ always
	// answers 200.
	//
	// go-containerregistry (v0.22.1) needs it when Target demands tokens:
	// it handles a redirected host's own challenge only when the host it
	// started on spoke Bearer too; after a 200 ping it has no bearer
	// transport and a 401 from Target fails the pull. containerd copes
	// either way.
	SessionToken bool
	// Wrap, if set, wraps the front's handler, inside its request
	// recording.
	Wrap func(http.Handler) http.Handler
}

// Front is an API front like registry.k8s.io: it answers /v2/ itself and
// redirects (307) every GET or HEAD of a manifest, blob, tag list or
// referrers list to Target, under Prefix, query string kept. It serves
// nothing else and, like archeio, refuses other methods with 405.
//
// Redirects name Target by "localhost" rather than 127.0.0.1 so that, as
// from registry.k8s.io to its backends, they leave the original hostname;
// see the package documentation.
type Front struct {
	t    testing.TB
	opts FrontOptions

	mu  sync.Mutex // serialises Start and Stop
	svc *testinfra.Service

	rmu      sync.Mutex
	requests []*FrontRequest
}

// FrontRequest is one request a Front received.
type FrontRequest struct {
	Time          time.Time
	Method        string
	Path          string
	Query         string
	Authorization bool
	// Status is the answer's HTTP status (0 while still being handled),
	// and Location its redirect target, if any.
	Status   int
	Location string
}

// StartFront starts a Front on a free 127.0.0.1 port. Stop is registered
// with t.Cleanup.
func StartFront(t testing.TB, opts FrontOptions) *Front {
	t.Helper()
	if opts.Target == nil {
		t.Fatal("testsupport: FrontOptions.Target is nil")
	}
	opts.Prefix = strings.Trim(opts.Prefix, "/")
	svc, err := testinfra.NewService(nil)
	if err != nil {
		t.Fatalf("testsupport: front: %v", err)
	}
	f := &Front{t: t, opts: opts, svc: svc}
	t.Cleanup(f.Stop)
	f.Start()
	return f
}

// Start serves again after Stop; a no-op while serving.
func (f *Front) Start() {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.svc.Start(f.handler()); err != nil {
		f.t.Fatalf("testsupport: start front: %v", err)
	}
}

// Stop closes the front's port and connections; idempotent.
func (f *Front) Stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.svc.Stop(); err != nil {
		f.t.Errorf("testsupport: front: %v", err)
	}
}

// URL is the front's base URL, "http://127.0.0.1:port".
func (f *Front) URL() string { return f.svc.URL("127.0.0.1") }

// Host is "127.0.0.1:port", the registry part of an image reference.
func (f *Front) Host() string { return f.svc.Addr() }

// Ref returns Host()+"/"+s.
func (f *Front) Ref(repoAndTagOrDigest string) string { return f.Host() + "/" + repoAndTagOrDigest }

// Prefix is the repository prefix on Target, without slashes.
func (f *Front) Prefix() string { return f.opts.Prefix }

// Count reports how many requests reached the front whose method matches
// (case-insensitive; "" = any) and whose path contains pathContains.
func (f *Front) Count(method, pathContains string) int {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	n := 0
	for _, r := range f.requests {
		if (method == "" || strings.EqualFold(method, r.Method)) && strings.Contains(r.Path, pathContains) {
			n++
		}
	}
	return n
}

// Requests lists every request the front received, in arrival order.
func (f *Front) Requests() []FrontRequest {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	out := make([]FrontRequest, len(f.requests))
	for i, r := range f.requests {
		out[i] = *r
	}
	return out
}

// ResetCounts forgets recorded requests.
func (f *Front) ResetCounts() {
	f.rmu.Lock()
	f.requests = nil
	f.rmu.Unlock()
}

func (f *Front) handler() http.Handler {
	var h http.Handler = http.HandlerFunc(f.serve)
	if f.opts.Wrap != nil {
		h = f.opts.Wrap(h)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &FrontRequest{
			Time:          time.Now(),
			Method:        r.Method,
			Path:          r.URL.Path,
			Query:         r.URL.RawQuery,
			Authorization: r.Header.Get("Authorization") != "",
		}
		f.rmu.Lock()
		f.requests = append(f.requests, rec)
		f.rmu.Unlock()
		sw := &testinfra.StatusWriter{ResponseWriter: w}
		defer func() {
			f.rmu.Lock()
			rec.Status = sw.Status
			rec.Location = sw.Header().Get("Location")
			f.rmu.Unlock()
		}()
		h.ServeHTTP(sw, r)
	})
}

func (f *Front) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		ociError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "only GET and HEAD are allowed")
		return
	}
	p := r.URL.Path
	switch {
	case p == "/v2/" || p == "/v2":
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		if f.opts.SessionToken && !hasSessionToken(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+f.URL()+`/token",service="`+f.Host()+`"`)
			ociError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	case p == "/token" && f.opts.SessionToken:
		body, err := json.Marshal(map[string]any{"token": testinfra.RandomHex(16), "expires_in": 3600})
		if err != nil {
			panic(err)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	default:
		m := frontRoute.FindStringSubmatch(p)
		if m == nil {
			ociError(w, http.StatusNotFound, "NAME_UNKNOWN", "no such route on the front: "+p)
			return
		}
		name, rest := m[1], m[2]
		if f.opts.Prefix != "" {
			name = f.opts.Prefix + "/" + name
		}
		loc := f.opts.Target.svc.NamedURL() + "/v2/" + name + "/" + rest
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusTemporaryRedirect)
	}
}

func hasSessionToken(r *http.Request) bool {
	prefix, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(prefix, "bearer") && sessionTokenPattern.MatchString(tok)
}
