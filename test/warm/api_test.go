package warm

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/warm"
)

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// postWarm sends body to POST /api/v1/warm and returns the status, the
// content type and the body.
func postWarm(t *testing.T, p *ts.Proxy, authorization, body string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.AdminURL()+"/api/v1/warm", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), raw
}

// A request the server cannot act on is refused with a JSON error before
// anything is fetched; without the admin token nothing is even read.
func TestWarmRefusesBadRequests(t *testing.T) {
	w := newWatch()
	reg := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w.wrap})
	ts.PushImage(t, reg, "team/app:v1", 1, 1024)
	w.reset()
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: name, Reg: reg})
	cfg.Admin.Token = config.Secret(token)
	p := ts.StartProxyConfig(t, cfg)
	good := `{"images": ["` + name + `/team/app:v1"]}`

	for _, c := range []struct{ name, body, msg string }{
		{"not JSON", `images: all`, "invalid JSON"},
		{"empty body", ``, "empty"},
		{"no images", `{}`, "at least one image"},
		{"empty images", `{"images": []}`, "at least one image"},
		{"images not a list", `{"images": "` + name + `/team/app:v1"}`, "images has the wrong type"},
		{"bad platform", `{"images": ["` + name + `/team/app:v1"], "platforms": ["linux"]}`, `platforms[0]: "linux" is not a platform`},
		{"unknown field", `{"images": ["` + name + `/team/app:v1"], "dryrun": true}`, `unknown field "dryrun"`},
		{"two objects", good + good, "want one JSON object"},
	} {
		code, ct, raw := postWarm(t, p, "Bearer "+token, c.body)
		var body struct{ Error string }
		if code != http.StatusBadRequest || ct != "application/json" || json.Unmarshal(raw, &body) != nil ||
			!strings.Contains(body.Error, c.msg) {
			t.Errorf("%s: %d %s %q, want 400 JSON saying %q", c.name, code, ct, raw, c.msg)
		}
	}
	for _, auth := range []string{"", "Basic " + token} {
		code, ct, raw := postWarm(t, p, auth, good)
		if code != http.StatusUnauthorized || ct != "application/json" || !bytes.Contains(raw, []byte(`"error"`)) {
			t.Errorf("Authorization %q: %d %s %q, want 401 JSON", auth, code, ct, raw)
		}
	}
	if code, _, _ := postWarm(t, p, "Bearer wrong", good); code != http.StatusForbidden {
		t.Errorf("wrong token: %d, want 403", code)
	}
	if gets := w.gets(); len(gets) != 0 {
		t.Errorf("refused warms fetched from the upstream: %v", gets)
	}
	if n := p.Metric(t, "multiproxy_cache_misses_total", nil); n != 0 {
		t.Errorf("refused warms looked things up: %v cache misses", n)
	}
}

// A dry run lists which upstream would warm what, and what no upstream
// serves, and fetches nothing.
func TestWarmDryRunPlansOnly(t *testing.T) {
	w1, w2 := newWatch(), newWatch()
	one := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w1.wrap})
	two := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w2.wrap})
	ts.PushImage(t, one, "team/a:v1", 1, 1024)
	ts.PushImage(t, two, "team/b:v1", 1, 1024)
	w1.reset()
	w2.reset()
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "one.test", Reg: one}, ts.ProxyUpstream{Name: "two.test", Reg: two})

	images := []string{"two.test/team/b:v1", "one.test/team/a:v1", "other.example.com/x/y:1", "Not A Reference", "one.test/team/a"}
	events := warmNow(t, p, "", warm.Request{Images: images, DryRun: true})
	want := []warm.Event{
		{Event: warm.EventPlan, Image: images[0], Upstream: "two.test"},
		{Event: warm.EventPlan, Image: images[1], Upstream: "one.test"},
		{Event: warm.EventSkipped, Image: images[2], Reason: "no upstream serves registry other.example.com"},
		{Event: warm.EventSkipped, Image: images[3]},
		{Event: warm.EventPlan, Image: images[4], Upstream: "one.test"},
	}
	sum := summary(t, events)
	if len(events) != len(want)+1 {
		t.Fatalf("events %+v, want %d and a summary", events, len(want))
	}
	for i, e := range want {
		got := events[i]
		if i == 3 {
			if got.Event != warm.EventSkipped || !strings.HasPrefix(got.Reason, "invalid reference: ") {
				t.Errorf("event %d = %+v, want an invalid reference skipped", i, got)
			}
			continue
		}
		if got != e {
			t.Errorf("event %d = %+v, want %+v", i, got, e)
		}
	}
	if sum.Skipped != 2 || sum.Cached != 0 || sum.Failed != 0 || sum.Bytes != 0 {
		t.Errorf("summary %+v, want 2 skipped and nothing else", sum)
	}
	if g1, g2 := w1.gets(), w2.gets(); len(g1)+len(g2) != 0 {
		t.Errorf("a dry run fetched from the upstreams: %v %v", g1, g2)
	}
}
