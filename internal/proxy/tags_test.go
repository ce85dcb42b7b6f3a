package proxy_test

import (
	"io"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// listAnswer is what a client sees of a tag list answer.
type listAnswer struct {
	Status                           int
	ContentType, ContentLength, Link string
	Body                             string
}

func askList(t *testing.T, url string) listAnswer {
	t.Helper()
	resp := get(t, url, http.MethodGet)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return listAnswer{resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"), resp.Header.Get("Link"), string(b)}
}

// tags/list's n is checked as the upstream checks it: a negative or
// non-integer n is its 400 PAGINATION_NUMBER_INVALID, not the cached tags
// served as a stale 200, and n=0 is an empty page; every answer is the
// upstream's, bytes and Link included.
func TestTagListPageSizeAnswersAsTheUpstream(t *testing.T) {
	up, f := faultyUpstream(t)
	for _, tag := range []string{"1", "2", "3"} {
		ts.PushImage(t, up, "library/small:"+tag, 1, 1024)
	}
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	// Cached tags, which a stale answer would list.
	pullImage(t, p, "docker.io", "library/small:1")

	var refused int
	for _, n := range []string{"-5", "abc", "1.5", "99999999999999999999", "-0", "0", "1", "2", "3", "100", ""} {
		path := "/v2/library/small/tags/list?n=" + url.QueryEscape(n)
		want := askList(t, up.URL()+path)
		f.ResetCounts()
		got := askList(t, p.URL("docker.io")+path)
		if got != want {
			t.Errorf("n=%q:\n got  %+v\n want %+v (upstream)", n, got, want)
		}
		if want.Status == http.StatusBadRequest {
			refused++
			if reqs := f.Count("", "/tags/"); reqs != 0 {
				t.Errorf("n=%q: an invalid n went upstream %d times", n, reqs)
			}
		}
	}
	if refused == 0 {
		t.Fatal("the upstream refused no n: nothing was compared")
	}

	// With the upstream down the cached tags are paged the same way: n=0
	// is still an empty page, a bad n still a 400.
	up.Stop()
	for _, c := range []struct {
		n      string
		status int
		body   string
	}{
		{"0", http.StatusOK, `{"name":"library/small","tags":[]}` + "\n"},
		{"-5", http.StatusBadRequest, `{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"invalid number of results requested","detail":{"n":-5}}]}` + "\n"},
	} {
		got := askList(t, p.URL("docker.io")+"/v2/library/small/tags/list?n="+c.n)
		if got.Status != c.status || got.Body != c.body {
			t.Errorf("upstream down, n=%s: %d %q, want %d %q", c.n, got.Status, got.Body, c.status, c.body)
		}
	}
}

// In one-port mode a client routed by ?ns= follows a paged tag list's or
// catalog's Link back to the same upstream, to the last page.
func TestOnePortTagPagesKeepNs(t *testing.T) {
	hub := ts.StartRegistry(t, ts.RegistryOptions{})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	want := []string{"1", "2", "3", "4", "5"}
	for _, tag := range want {
		ts.PushImage(t, ghcr, "org/app:"+tag, 1, 512)
	}
	// The same repository on the other upstream, with other tags: a page
	// that lost ns and landed there would show.
	ts.PushImage(t, hub, "org/app:other", 1, 512)
	cfg := ts.NewProxyConfig(t,
		ts.ProxyUpstream{Name: "docker.io", Reg: hub, Tweak: func(u *config.Upstream) { u.Listen = "" }},
		ts.ProxyUpstream{Name: "ghcr.io", Reg: ghcr, Tweak: func(u *config.Upstream) { u.Listen = "" }},
	)
	cfg.ListenAll = "127.0.0.1:0"
	p := ts.StartProxyConfig(t, cfg)
	base := p.URL("ghcr.io")
	for _, n := range []string{"1", "2"} {
		if got := follow(t, base, "/v2/org/app/tags/list?n="+n+"&ns=ghcr.io", "tags"); !slices.Equal(got, want) {
			t.Errorf("tags/list?n=%s&ns=ghcr.io followed page by page: %v, want %v", n, got, want)
		}
	}
	repos := []string{"org/app", "org/b", "org/c"}
	for _, repo := range repos[1:] {
		ts.PushImage(t, ghcr, repo+":1", 1, 512)
	}
	for _, repo := range repos {
		if resp := get(t, base+"/v2/"+repo+"/manifests/1?ns=ghcr.io", http.MethodGet); resp.StatusCode != http.StatusOK {
			t.Fatalf("caching %s: %d", repo, resp.StatusCode)
		}
	}
	if got := follow(t, base, "/v2/_catalog?n=1&ns=ghcr.io", "repositories"); !slices.Equal(got, repos) {
		t.Errorf("_catalog?n=1&ns=ghcr.io followed page by page: %v, want %v", got, repos)
	}
}
