package proxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A v*.*.* rule of 1h serves a cached release tag with no upstream request,
// while latest (no rule, tag_freshness 0) still makes its HEAD; the access
// log names the rule that decided.
func TestTagRuleFreshness(t *testing.T) {
	up, f := faultyUpstream(t)
	release := ts.PushImage(t, up, "library/app:v1.2.3", 1, 1024)
	latest := ts.PushImage(t, up, "library/app:latest", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) {
			u.TagRules = []config.TagRule{{Match: "v*.*.*", Freshness: time.Hour}, {Match: "nightly-*", Freshness: 0}}
		}})
	pullImage(t, p, "docker.io", "library/app:v1.2.3")
	pullImage(t, p, "docker.io", "library/app:latest")

	f.ResetCounts()
	pullImage(t, p, "docker.io", "library/app:v1.2.3")
	if reqs := f.Requests(); len(reqs) != 0 {
		t.Errorf("second pull of v1.2.3 within its rule's 1h went upstream: %v", reqs)
	}
	f.ResetCounts()
	resp := get(t, p.URL("docker.io")+"/v2/library/app/manifests/latest", http.MethodGet)
	if got := resp.Header.Get("Docker-Content-Digest"); got != ts.Digest(t, latest) {
		t.Fatalf("latest served %s", got)
	}
	if heads := f.Count("HEAD", "/manifests/latest"); heads != 1 {
		t.Errorf("latest, matched by no rule and tag_freshness 0: %d upstream HEADs, want 1 (%v)", heads, f.Requests())
	}

	// A push of v1.2.3 within the hour is not seen: that is what the rule
	// asked for.
	ts.PushImage(t, up, "library/app:v1.2.3", 1, 1024)
	resp = get(t, p.URL("docker.io")+"/v2/library/app/manifests/v1.2.3", http.MethodGet)
	if got := resp.Header.Get("Docker-Content-Digest"); got != ts.Digest(t, release) {
		t.Errorf("within the rule's freshness v1.2.3 served %s, want the cached %s", got, ts.Digest(t, release))
	}

	var ruleLine, latestLine string
	for _, l := range strings.Split(p.Logs(), "\n") {
		if !strings.Contains(l, "msg=request") || !strings.Contains(l, "kind=manifest") {
			continue
		}
		if strings.Contains(l, "ref=v1.2.3") {
			ruleLine = l
		}
		if strings.Contains(l, "ref=latest") {
			latestLine = l
		}
	}
	if !strings.Contains(ruleLine, `tag_rule=v*.*.*`) {
		t.Errorf("access log of a v1.2.3 pull does not name its rule: %q", ruleLine)
	}
	if latestLine == "" || strings.Contains(latestLine, "tag_rule=") {
		t.Errorf("access log of a latest pull names a rule, or is missing: %q", latestLine)
	}
}

// A rule of 0s for a tag makes it revalidate on every pull even when
// tag_freshness would serve it from the cache.
func TestTagRuleZeroOverridesTagFreshness(t *testing.T) {
	up, f := faultyUpstream(t)
	ts.PushImage(t, up, "library/app:latest", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) {
			u.TagFreshness = time.Hour
			u.TagRules = []config.TagRule{{Match: "latest", Freshness: 0}}
		}})
	pullImage(t, p, "docker.io", "library/app:latest")
	f.ResetCounts()
	get(t, p.URL("docker.io")+"/v2/library/app/manifests/latest", http.MethodGet)
	if heads := f.Count("HEAD", "/manifests/latest"); heads != 1 {
		t.Errorf("latest with a 0s rule: %d upstream HEADs, want 1 (%v)", heads, f.Requests())
	}
}
