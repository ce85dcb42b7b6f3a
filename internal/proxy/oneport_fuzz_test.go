package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// upstreamLink is the Link header a paginated answer carries, written for
// the upstream server's own paths.
const upstreamLink = `</v2/org/app/tags/list?last=1&n=1>; rel="next"`

// FuzzOnePort sends arbitrary paths and queries through the one-port
// handler in front of real Servers whose handlers are stand-ins: what is
// fuzzed is which upstream a request reaches, with what path, and what a
// client is told when it reaches none. Nothing here dials an upstream.
func FuzzOnePort(f *testing.F) {
	dir := f.TempDir()
	ups := []config.Upstream{
		{Name: "docker.io", Remote: "https://registry-1.docker.io"},
		{Name: "ghcr.io", Remote: "https://ghcr.io"},
		{Name: "internal", Remote: "http://reg.example:5000", Aliases: []string{"reg.example", "Mirror.Example"}},
	}
	type hit struct {
		route int
		path  string
		query string
	}
	var got []hit
	var routes []Route
	for i, u := range ups {
		u.Storage = config.UpstreamStorage{Path: filepath.Join(dir, u.Name)}
		u.Timeout, u.FillTimeout = time.Second, time.Minute
		s, err := New(context.Background(), u, Options{})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(s.Close)
		routes = append(routes, Route{Server: s, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = append(got, hit{i, r.URL.Path, r.URL.RawQuery})
			w.Header().Set("Link", upstreamLink)
			_, _ = w.Write([]byte("upstream"))
		})})
	}
	h := OnePort(func() []Route { return routes })
	// first is the route a registry name selects, or -1.
	first := func(registry string) int {
		for i, route := range routes {
			if route.Server.cfg.Serves(registry) {
				return i
			}
		}
		return -1
	}

	for _, s := range [][2]string{
		{"/v2/", ""}, {"/v2", ""}, {"/", ""}, {"", ""},
		{"/v2/library/alpine/manifests/3", "ns=docker.io"},
		{"/v2/library/alpine/manifests/3", "ns=index.docker.io"},
		{"/v2/org/app/tags/list", "ns=GHCR.IO&n=1"},
		{"/v2/org/app/tags/list", "ns=evil.example"},
		{"/v2/org/app/tags/list", "ns=127.0.0.1:5000"},
		{"/v2/docker.io/library/alpine/manifests/3", ""},
		{"/v2/ghcr.io/org/app/tags/list", "n=1"},
		{"/v2/reg.example:5000/org/app/blobs/sha256:00", ""},
		{"/v2/mirror.example/x/manifests/1", ""},
		{"/v2/ghcr.io", ""}, {"/v2/ghcr.io/", ""},
		{"/v2/evil.example/org/app/manifests/1", ""},
		{"/v2/_catalog", ""},
		{"/v2/docker.io/x/manifests/1", "ns=ghcr.io"},
		{"/v2/docker.io/x/manifests/1", "ns="},
		{"/v2/docker.io/x/manifests/1", "ns=%zz&ns=ghcr.io"},
		{"/v2/ docker.io /x", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, path, query string) {
		got = got[:0]
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.URL = &url.URL{Path: path, RawQuery: query}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		resp := w.Result()
		body, _ := io.ReadAll(resp.Body)

		if resp.StatusCode >= 500 {
			t.Fatalf("%q ?%q: %d %s", path, query, resp.StatusCode, body)
		}
		if len(got) > 1 {
			t.Fatalf("%q ?%q reached %d upstreams", path, query, len(got))
		}

		ns := r.URL.Query().Get("ns")
		rest, api := strings.CutPrefix(path, "/v2/")
		registry, _, _ := strings.Cut(rest, "/")
		var want int // the route that must answer, or -1
		switch {
		case ns != "":
			want = first(ns)
		case path == "/v2/" || path == "/v2":
			want = -1
		case api:
			want = first(registry)
		default:
			want = -1
		}

		if want < 0 {
			if len(got) != 0 {
				t.Fatalf("%q ?%q reached %s, which it does not name", path, query, ups[got[0].route].Name)
			}
			if ns == "" && (path == "/v2/" || path == "/v2") {
				if resp.StatusCode != http.StatusOK || string(body) != "{}" {
					t.Fatalf("version check %q: %d %s", path, resp.StatusCode, body)
				}
				return
			}
			var oci struct {
				Errors []struct{ Code, Message string }
			}
			if resp.StatusCode != http.StatusNotFound || json.Unmarshal(body, &oci) != nil ||
				len(oci.Errors) != 1 || oci.Errors[0].Code != "NAME_UNKNOWN" ||
				!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("%q ?%q names no upstream, got %d %q %s", path, query, resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			return
		}

		if len(got) != 1 || got[0].route != want {
			t.Fatalf("%q ?%q: reached %+v, want %s", path, query, got, ups[want].Name)
		}
		if got[0].query != query {
			t.Fatalf("%q ?%q: the upstream got the query %q", path, query, got[0].query)
		}
		if ns != "" {
			// containerd's mirror paths carry no registry prefix; links
			// out keep the ns that routed the request here.
			wantLink := `</v2/org/app/tags/list?` + url.Values{"last": {"1"}, "n": {"1"}, "ns": {ns}}.Encode() + `>; rel="next"`
			if got[0].path != path || resp.Header.Get("Link") != wantLink {
				t.Fatalf("%q ?%q: the upstream got %q, the client the Link %q, want %q", path, query, got[0].path, resp.Header.Get("Link"), wantLink)
			}
			return
		}
		// The prefix comes off on the way in and goes back on links out.
		tail, ok := strings.CutPrefix(got[0].path, "/v2/")
		if !ok || (path != "/v2/"+registry+"/"+tail && (path != "/v2/"+registry || tail != "")) {
			t.Fatalf("%q: the upstream got %q", path, got[0].path)
		}
		if want := `</v2/` + registry + `/org/app/tags/list?last=1&n=1>; rel="next"`; resp.Header.Get("Link") != want {
			t.Fatalf("%q: Link %q, want %q", path, resp.Header.Get("Link"), want)
		}
	})
}

// FuzzPrefixLinks checks the Link rewrite on its own, for any header values
// and registry: links into /v2/ come back under the registry's prefix, once,
// and nothing else in the headers or body changes.
func FuzzPrefixLinks(f *testing.F) {
	for _, s := range [][2]string{
		{upstreamLink, "ghcr.io"},
		{`</v2/_catalog?last=a&n=2>; rel="next"`, "reg.example:5000"},
		{"</v2/a>; rel=\"next\"\n</v2/b>; rel=\"prev\"", "docker.io"},
		{"</v2/a></v2/b></v2/", "x"},
		{"<https://other.example/v2/a>; rel=\"next\"", "docker.io"},
		{"</v2/docker.io/a>", "docker.io"},
		{"<</v2//v2/</v2", "v2"},
		{"", "docker.io"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, links, registry string) {
		// A registry that reaches here is a configured name, never empty
		// and never holding the "<" that opens a link.
		if registry == "" || strings.Contains(registry, "<") {
			return
		}
		prefix := "/v2/" + registry + "/"
		in := strings.Split(links, "\n")
		rec := httptest.NewRecorder()
		rec.Header()["Link"] = append([]string(nil), in...)
		rec.Header().Set("Content-Type", "application/json")
		p := &prefixLinks{ResponseWriter: rec, prefix: prefix}
		p.WriteHeader(http.StatusOK)
		_, _ = p.Write([]byte("a"))
		_, _ = p.ReadFrom(strings.NewReader("b"))

		sent := rec.Result().Header
		if ct := sent.Get("Content-Type"); ct != "application/json" || rec.Body.String() != "ab" {
			t.Fatalf("Content-Type %q, body %q changed", ct, rec.Body.String())
		}
		out := sent.Values("Link")
		if len(out) != len(in) {
			t.Fatalf("%d Link values became %d: %q", len(in), len(out), out)
		}
		for i, l := range out {
			// Taking the prefix back out gives the upstream's value:
			// nothing but the prefix was added.
			if back := strings.ReplaceAll(l, "<"+prefix, "</v2/"); back != in[i] {
				t.Fatalf("Link %q became %q", in[i], l)
			}
			// Every link into the API now points under the registry.
			for j := strings.Index(l, "</v2/"); j >= 0; {
				if !strings.HasPrefix(l[j:], "<"+prefix) {
					t.Fatalf("Link %q became %q: a link at %d misses %q", in[i], l, j, prefix)
				}
				k := strings.Index(l[j+1:], "</v2/")
				if k < 0 {
					break
				}
				j += 1 + k
			}
		}
		// Later writes must not prefix a second time.
		if again := rec.Header().Values("Link"); strings.Join(again, "\n") != strings.Join(out, "\n") {
			t.Fatalf("Link %q rewritten again to %q", out, again)
		}
	})
}
