package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// An upstream that answers a referrers or tag list request with a 200 and a
// body that is no such thing costs the client a 502 with an OCI error, never
// the body; it counts against the upstream, never the store, so /readyz
// stays ready and no load balancer takes the replica out for it.
func TestBadUpstreamContentIsA502AndKeepsTheNodeReady(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))
	ts.WaitUntil(t, 10*time.Second, "docker.io reachable", func() (bool, string) {
		r := getReadyz(t, p)
		return r.code == http.StatusOK && r.state("docker.io") == "reachable", fmt.Sprintf("%d %s", r.code, r.raw)
	})
	base := p.URL("docker.io") + "/v2/library/app"

	answers := []struct {
		path, contentType, body, kind string
	}{
		{"/referrers/" + ts.Digest(t, img), "application/vnd.oci.image.index.v1+json", `{"foo":1}`, "referrers"},
		{"/tags/list", "application/json", `{"foo":1}`, "tag"},
		{"/tags/list", "application/json", `[1,2]`, "tag"},
		{"/tags/list", "text/plain", `not json`, "tag"},
	}
	for _, a := range answers {
		remove := up.Faults.Add(ts.Rule{PathContains: a.path, Action: ts.Body(http.StatusOK, a.contentType, a.body)})
		code, body := get(t, base+a.path, "")
		remove()
		var e struct {
			Errors []struct{ Code, Message string }
		}
		if err := json.Unmarshal(body, &e); code != http.StatusBadGateway || err != nil || len(e.Errors) != 1 || e.Errors[0].Code != "UNKNOWN" {
			t.Errorf("%s answered %s upstream: %d %s, want 502 with an OCI error", a.path, a.body, code, body)
		}
		if strings.Contains(string(body), a.body) {
			t.Errorf("%s: the upstream's body %s was relayed: %s", a.path, a.body, body)
		}
	}

	r := getReadyz(t, p)
	if r.code != http.StatusOK || !r.Ready || r.state("docker.io") == "degraded" {
		t.Errorf("/readyz after bad upstream answers: %d %s", r.code, r.raw)
	}
	if got := r.upstream("docker.io").LastError; !strings.HasPrefix(got, "bad content") {
		t.Errorf("/readyz last error %q, want the bad content", got)
	}
	if n := p.Metric(t, "multiproxy_storage_errors_total", map[string]string{"upstream": "docker.io"}); n != 0 {
		t.Errorf("%v storage errors counted for bad upstream answers", n)
	}
	for kind, want := range map[string]float64{"referrers": 1, "tag": 3, "manifest": 0, "blob": 0} {
		if n := p.Metric(t, "multiproxy_upstream_bad_content_total", map[string]string{"upstream": "docker.io", "kind": kind}); n != want {
			t.Errorf("multiproxy_upstream_bad_content_total{kind=%q} = %v, want %v", kind, n, want)
		}
	}

	// Answered well again, both are served.
	for _, path := range []string{"/referrers/" + ts.Digest(t, img), "/tags/list"} {
		if code, body := get(t, base+path, ""); code != http.StatusOK {
			t.Errorf("%s from a well upstream: %d %s", path, code, body)
		}
	}
}
