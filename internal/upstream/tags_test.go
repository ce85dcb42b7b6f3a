package upstream_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// The next page of a tag list is the query of the upstream's Link
// rel="next", re-encoded: never its path or host, which are the
// upstream's, so a client following our Link comes back to us.
func TestTagListNextPage(t *testing.T) {
	for _, c := range []struct {
		link, next string
		bad        bool
	}{
		{link: ``, next: ``},
		{link: `</v2/team/a/tags/list?n=2&last=b>; rel="next"`, next: `last=b&n=2`},
		{link: `<https://cdn.example/other/prefix/v2/team/a/tags/list?last=b&n=2>; rel="next"`, next: `last=b&n=2`},
		{link: `</v2/team/a/tags/list?last=a>; rel="prev", </v2/team/a/tags/list?last=c>; rel="next"`, next: `last=c`},
		{link: `</v2/team/a/tags/list?last=a>; rel="prev"`, next: ``},
		{link: `</v2/team/a/tags/list?last=a%2Fb+c>; rel="next"`, next: `last=a%2Fb+c`},
		{link: `</v2/team/a/tags/list?last=%zz>; rel="next"`, bad: true},
		{link: `no brackets; rel="next"`, next: ``},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c.link != "" {
				w.Header().Set("Link", c.link)
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"name":"team/a","tags":["a","b"]}`))
		}))
		cl, _ := client(t, srv.URL, upstream.Options{})
		list, err := cl.GetTags(context.Background(), "team/a", "n=2")
		switch {
		case c.bad:
			if cause := upstream.CauseOf(err); cause != upstream.CauseBadContent {
				t.Errorf("Link %s: %+v, %v; want bad content", c.link, list, err)
			}
		case err != nil || list.Next != c.next || len(list.Tags) != 2:
			t.Errorf("Link %s: %+v, %v; want next %q", c.link, list, err, c.next)
		}
		srv.Close()
	}
}

// The client's query goes to the upstream as it is.
func TestTagListQueryIsPassedOn(t *testing.T) {
	var got seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.add(r)
		_, _ = w.Write([]byte(`{"name":"team/a","tags":[]}`))
	}))
	t.Cleanup(srv.Close)
	cl, _ := client(t, srv.URL, upstream.Options{})
	if _, err := cl.GetTags(context.Background(), "team/a", "n=5&last=x"); err != nil {
		t.Fatal(err)
	}
	if reqs := got.all(); len(reqs) != 1 || reqs[0].URL.RawQuery != "n=5&last=x" {
		t.Errorf("upstream was sent %v, want one request with ?n=5&last=x", reqs)
	}
}
