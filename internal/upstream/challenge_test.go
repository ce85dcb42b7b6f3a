package upstream_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// seen is what a test registry was sent.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (s *seen) add(r *http.Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r.Clone(context.Background()))
	s.mu.Unlock()
}

func (s *seen) all() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.reqs...)
}

// tokenRegistry challenges for a bearer token from its own /token, and
// answers a manifest HEAD sent with that token.
func tokenRegistry(t *testing.T) (*httptest.Server, *seen, *seen) {
	t.Helper()
	var api, tokens seen
	var mux http.ServeMux
	srv := httptest.NewServer(&mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		tokens.add(r)
		_, _ = w.Write([]byte(`{"token":"tok-` + r.URL.Query().Get("scope") + `","expires_in":300}`))
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		api.add(r)
		if r.Header.Get("Authorization") != "Bearer tok-repository:team/a:pull" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="reg.test",scope="repository:team/a:pull"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("0", 64))
		w.WriteHeader(http.StatusOK)
	})
	return srv, &api, &tokens
}

// A bearer challenge is answered with a token for the repository, asked
// for with the challenge's service, and the token is reused: the second
// request of the repository goes out with it, no 401 in between.
func TestBearerChallengeIsAnsweredOnceAndReused(t *testing.T) {
	srv, api, tokens := tokenRegistry(t)
	cl, _ := client(t, srv.URL, upstream.Options{Username: "alice", Password: "s3cret"})
	for i := range 2 {
		if _, err := cl.HeadManifest(context.Background(), "team/a", "1"); err != nil {
			t.Fatalf("HEAD %d: %v", i, err)
		}
	}
	if got := len(api.all()); got != 3 {
		t.Errorf("%d API requests, want 3 (401, retry with token, reuse)", got)
	}
	toks := tokens.all()
	if len(toks) != 1 {
		t.Fatalf("%d token requests, want 1", len(toks))
	}
	q := toks[0].URL.Query()
	if q.Get("service") != "reg.test" || q.Get("scope") != "repository:team/a:pull" {
		t.Errorf("token asked for with %v", q)
	}
	// The realm is on the remote's own host: our credentials go to it.
	if u, p, ok := toks[0].BasicAuth(); !ok || u != "alice" || p != "s3cret" {
		t.Errorf("token request credentials %q/%q (%v), want alice's", u, p, ok)
	}
}

// A basic challenge is answered with the configured credentials; without
// any, the 401 is the caller's, an auth failure, after one request.
func TestBasicChallenge(t *testing.T) {
	var api seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.add(r)
		if u, p, ok := r.BasicAuth(); ok && u == "bob" && p == "pw" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="reg"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)

	cl, _ := client(t, srv.URL, upstream.Options{Username: "bob", Password: "pw"})
	if _, err := cl.HeadManifest(context.Background(), "team/a", "1"); err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	if got := len(api.all()); got != 2 {
		t.Errorf("%d requests with credentials, want 2 (401, answer)", got)
	}

	anon, _ := client(t, srv.URL, upstream.Options{})
	before := len(api.all())
	_, err := anon.HeadManifest(context.Background(), "team/a", "1")
	if c := upstream.CauseOf(err); c != upstream.CauseAuth {
		t.Errorf("without credentials: cause %s (%v), want auth", c, err)
	}
	if got := len(api.all()) - before; got != 1 {
		t.Errorf("%d requests without credentials, want 1: nothing to answer with", got)
	}
}

// A host that refuses the token it asked for is not asked again in a loop:
// the second 401 is the caller's.
func TestSecond401IsReturned(t *testing.T) {
	var api, tokens seen
	var mux http.ServeMux
	srv := httptest.NewServer(&mux)
	t.Cleanup(srv.Close)
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		tokens.add(r)
		_, _ = w.Write([]byte(`{"token":"never-good"}`))
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, r *http.Request) {
		api.add(r)
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	cl, _ := client(t, srv.URL, upstream.Options{})
	_, err := cl.HeadManifest(context.Background(), "team/a", "1")
	if ue := asError(t, err); ue.Cause != upstream.CauseAuth || ue.Status != http.StatusUnauthorized {
		t.Errorf("refused token: cause %s, status %d; want auth, 401", ue.Cause, ue.Status)
	}
	if a, k := len(api.all()), len(tokens.all()); a != 2 || k != 1 {
		t.Errorf("%d API and %d token requests, want 2 and 1", a, k)
	}
}

// A challenge that cannot be answered safely is refused before anything
// is sent: an https remote's token realm on plain http would carry the
// password, and its token, in clear.
func TestPlainHTTPRealmOfHTTPSRemoteIsNotAsked(t *testing.T) {
	var tokens seen
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens.add(r)
		_, _ = w.Write([]byte(`{"token":"t"}`))
	}))
	t.Cleanup(plain.Close)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+plain.URL+`/token"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(srv.Close)
	var refused []string
	cl, _ := client(t, srv.URL, upstream.Options{CAFile: caFile(t, srv), Username: "u", Password: "p",
		Refused: func(host, reason string) { refused = append(refused, reason) }})
	_, err := cl.HeadManifest(context.Background(), "team/a", "1")
	if c := upstream.CauseOf(err); c != upstream.CauseUnreachable {
		t.Errorf("plain-HTTP realm: cause %s (%v), want unreachable", c, err)
	}
	if n := len(tokens.all()); n != 0 {
		t.Errorf("the plain-HTTP realm was sent %d token requests", n)
	}
	if len(refused) != 1 || refused[0] != upstream.RefusedDowngrade {
		t.Errorf("refusals reported %v, want one downgrade", refused)
	}
}

// caFile writes the certificate of a TLS test server where ca_file can
// name it.
func caFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	block := &pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
