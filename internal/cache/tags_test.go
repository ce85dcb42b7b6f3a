package cache_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/multiproxy/multiproxy/internal/cache"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// A tag list is the upstream's, page by page (n, last). When the upstream
// fails, it is made from the tags cached here, paginated the same way and
// marked stale; a 404 is passed on.
func TestListTags(t *testing.T) {
	fx := newFixture(t, plain())
	for _, tag := range []string{"a", "b", "c"} {
		fx.push(t, "library/app:"+tag, 1024)
	}
	fx.push(t, "library/app:uncached", 1024)
	for _, tag := range []string{"a", "b", "c"} {
		fx.resolve(t, "library/app", tag)
	}

	type page struct {
		query string
		tags  []string
		next  url.Values // nil: the last page
	}
	check := func(t *testing.T, p page, stale bool) {
		t.Helper()
		list, err := fx.c.ListTags(t.Context(), "library/app", p.query)
		if err != nil {
			t.Fatalf("?%s: %v", p.query, err)
		}
		if got := tagsOf(t, list); !slices.Equal(got, p.tags) || list.Stale != stale {
			t.Errorf("?%s: %v (stale %v), want %v (stale %v)", p.query, got, list.Stale, p.tags, stale)
		}
		next, err := url.ParseQuery(list.Next)
		if err != nil || (p.next == nil) != (list.Next == "") || p.next != nil && next.Encode() != p.next.Encode() {
			t.Errorf("?%s: next page %q, want %q", p.query, list.Next, p.next.Encode())
		}
	}

	t.Run("passed through", func(t *testing.T) {
		check(t, page{"", []string{"a", "b", "c", "uncached"}, nil}, false)
	})

	t.Run("passed through by page", func(t *testing.T) {
		// The client's n and last reach the upstream as a query, not
		// escaped into the path (where they once made every page a 404).
		for _, p := range []page{
			{"n=2", []string{"a", "b"}, url.Values{"n": {"2"}, "last": {"b"}}},
			// A full page, so distribution links a next one (empty).
			{"last=b&n=2", []string{"c", "uncached"}, url.Values{"n": {"2"}, "last": {"uncached"}}},
		} {
			check(t, p, false)
		}
	})

	t.Run("stale from the cached tags", func(t *testing.T) {
		remove := fx.f.Add(ts.Rule{PathContains: "/tags/list", Action: ts.Status(http.StatusServiceUnavailable, nil)})
		defer remove()
		stale := fx.obs.count("stale " + string(upstream.CauseServerError))
		for _, p := range []page{
			{"", []string{"a", "b", "c"}, nil},
			{"n=2", []string{"a", "b"}, url.Values{"n": {"2"}, "last": {"b"}}},
			{"last=b&n=2", []string{"c"}, nil},
		} {
			check(t, p, true)
		}
		if n := fx.obs.count("stale "+string(upstream.CauseServerError)) - stale; n != 3 {
			t.Errorf("%d stale serves reported, want 3", n)
		}
	})

	t.Run("404 passed on", func(t *testing.T) {
		if _, err := fx.c.ListTags(t.Context(), "library/nothing", ""); !upstream.IsNotFound(err) {
			t.Errorf("an unknown repository: %v, want not found", err)
		}
	})
}

func tagsOf(t *testing.T, list cache.TagList) []string {
	t.Helper()
	var body struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(list.Body, &body); err != nil {
		t.Fatalf("tag list %q: %v", list.Body, err)
	}
	return body.Tags
}
