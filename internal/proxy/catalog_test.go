package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

var nextLink = regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)

// follow GETs url and every page its Link headers name, collecting field
// ("repositories" or "tags") of each page.
func follow(t *testing.T, base, url, field string) []string {
	t.Helper()
	var all []string
	for pages := 0; url != ""; pages++ {
		if pages > 10 {
			t.Fatalf("more than 10 pages from %s", url)
		}
		resp := get(t, base+url, http.MethodGet)
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
		}
		var page map[string]json.RawMessage
		var items []string
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		if err := json.Unmarshal(page[field], &items); err != nil {
			t.Fatalf("GET %s: %s: %v", url, field, err)
		}
		all = append(all, items...)
		url = ""
		if m := nextLink.FindStringSubmatch(resp.Header.Get("Link")); m != nil {
			url = m[1]
		}
	}
	return all
}

// The seeds check a fresh setup with `curl http://HOST:PORT/v2/_catalog` on
// every port: it lists what that upstream has cached, page by page.
func TestCatalogListsWhatIsCached(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	for _, r := range []string{"team/a", "team/b", "team/c", "team/never-pulled"} {
		ts.PushImage(t, up, r+":1", 1, 1024)
	}
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	for _, r := range []string{"team/a", "team/b", "team/c"} {
		pullImage(t, p, "docker.io", r+":1")
	}
	want := []string{"team/a", "team/b", "team/c"}
	if got := follow(t, p.URL("docker.io"), "/v2/_catalog", "repositories"); !slices.Equal(got, want) {
		t.Errorf("_catalog: %v, want %v", got, want)
	}
	if got := follow(t, p.URL("docker.io"), "/v2/_catalog?n=2", "repositories"); !slices.Equal(got, want) {
		t.Errorf("_catalog?n=2, followed page by page: %v, want %v", got, want)
	}
}

// In one-port mode a client that names the registry by path prefix follows
// Link headers that keep the prefix, for the catalog and for tag lists.
func TestOnePortPaginationKeepsThePrefix(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	for _, tag := range []string{"1", "2", "3"} {
		ts.PushImage(t, up, "org/app:"+tag, 1, 1024)
	}
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "ghcr.io", Reg: up, Tweak: func(u *config.Upstream) { u.Listen = "" }})
	cfg.ListenAll = "127.0.0.1:0"
	p := ts.StartProxyConfig(t, cfg)
	base := p.URL("ghcr.io")
	if got := follow(t, base, "/v2/ghcr.io/org/app/tags/list?n=1", "tags"); !slices.Equal(got, []string{"1", "2", "3"}) {
		t.Errorf("tags/list?n=1 followed through the prefix: %v", got)
	}
	pullImage(t, p, "ghcr.io", "ghcr.io/org/app:1")
	if got := follow(t, base, "/v2/ghcr.io/_catalog?n=1", "repositories"); !slices.Equal(got, []string{"org/app"}) {
		t.Errorf("_catalog through the prefix: %v", got)
	}
	resp := get(t, base+"/v2/ghcr.io/org/app/blobs/uploads/", http.MethodGet)
	if code := ociCode(t, resp); resp.StatusCode != http.StatusMethodNotAllowed || code != "UNSUPPORTED" {
		t.Errorf("upload path: %d %s, want 405 UNSUPPORTED", resp.StatusCode, code)
	}
}
