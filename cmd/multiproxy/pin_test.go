package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// pinAPI sends one request to the pins API and decodes the JSON answer.
func pinAPI(t *testing.T, method, u, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %v", method, u, err)
	}
	return resp.StatusCode, out
}

func pinsOf(t *testing.T, adminURL string) admin.PinsAnswer {
	t.Helper()
	out, stderr, code := run(t, "pin", "ls", "--json", "--admin", adminURL)
	if code != 0 {
		t.Fatalf("pin ls: exit %d: %s", code, stderr)
	}
	var ans admin.PinsAnswer
	if err := json.Unmarshal([]byte(out), &ans); err != nil {
		t.Fatalf("pin ls --json printed %q: %v", out, err)
	}
	return ans
}

// Pins added through the command and the admin API are listed with what
// they hold, kept across a restart, and removed again; mistakes get 4xx
// answers that say what is wrong.
func TestPinCommandAndAPI(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	app := ts.PushImage(t, up, "library/app:1", 2, 64<<10)
	ts.PushImage(t, up, "library/other:1", 1, 1024)
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	p := ts.StartProxyConfig(t, cfg)

	out, stderr, code := run(t, "pin", "add", "--admin", p.AdminURL(), "docker.io/library/app:1")
	if code != 0 || !strings.Contains(out, "pinned docker.io/library/app:1 ("+ts.Digest(t, app)) {
		t.Fatalf("pin add: exit %d, out %q, err %q", code, out, stderr)
	}
	if err := ts.PullVerified(&http.Client{Timeout: 30 * time.Second}, p.URL("docker.io"), "library/app", "1"); err != nil {
		t.Fatal(err)
	}
	p.Settle(t)

	api := p.AdminURL() + "/api/v1/pins"
	if code, body := pinAPI(t, http.MethodPost, api, `{"upstream": "docker.io", "ref": "library/other:1"}`); code != http.StatusOK || body["source"] != "api" {
		t.Fatalf("POST pins: %d %v", code, body)
	}
	for _, tc := range []struct {
		method, url, body string
		status            int
		msg               string
	}{
		{http.MethodPost, api, `{"ref": "library/app"}`, http.StatusBadRequest, "names no tag or digest"},
		{http.MethodPost, api, `{"upstream": "docker.io", "ref": "library/app"}`, http.StatusBadRequest, "names no tag or digest"},
		{http.MethodPost, api, `{"ref": `, http.StatusBadRequest, "want a JSON body"},
		{http.MethodPost, api, `{"ref": "docker.io/library/app:1", "image": "x"}`, http.StatusBadRequest, "unknown field"},
		{http.MethodPost, api, `{"upstream": "quay.io", "ref": "a/b:1"}`, http.StatusNotFound, "no upstream named"},
		{http.MethodPost, api, `{"ref": "docker.io/library/nope:1"}`, http.StatusNotFound, "not found upstream"},
		{http.MethodDelete, api + "?ref=" + url.QueryEscape("docker.io/library/nope:1"), "", http.StatusNotFound, "is not pinned"},
		{http.MethodDelete, api, "", http.StatusBadRequest, "ref parameter required"},
	} {
		code, body := pinAPI(t, tc.method, tc.url, tc.body)
		if code != tc.status || !strings.Contains(fmt.Sprint(body["error"]), tc.msg) {
			t.Errorf("%s %s %s: %d %v, want %d with %q", tc.method, tc.url, tc.body, code, body, tc.status, tc.msg)
		}
	}

	ans := pinsOf(t, p.AdminURL())
	if len(ans.Upstreams) != 1 || len(ans.Upstreams[0].Pins) != 2 {
		t.Fatalf("pin ls: %+v, want 2 pins on docker.io", ans)
	}
	if pin := ans.Upstreams[0].Pins[0]; pin.Ref != "library/app:1" || pin.Digest != ts.Digest(t, app) || pin.Bytes < 2*64<<10 {
		t.Errorf("pin ls: first pin %+v, want library/app:1 at %s holding its two 64 KiB layers", pin, ts.Digest(t, app))
	}
	if got := p.Metric(t, "multiproxy_pinned_bytes", map[string]string{"upstream": "docker.io"}); int64(got) != ans.Upstreams[0].PinnedBytes || got < 2*64<<10 {
		t.Errorf("multiproxy_pinned_bytes = %v, pin ls says %d", got, ans.Upstreams[0].PinnedBytes)
	}
	var st admin.Status
	resp, err := http.Get(p.AdminURL() + "/api/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Upstreams) != 1 || st.Upstreams[0].PinnedBytes == nil || *st.Upstreams[0].PinnedBytes != ans.Upstreams[0].PinnedBytes {
		t.Errorf("status: %+v (%v), want pinned_bytes %d", st.Upstreams, err, ans.Upstreams[0].PinnedBytes)
	}
	resp, err = http.Get(p.AdminURL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "<small>pinned ") {
		t.Errorf("the status page does not show what pins hold:\n%s", page)
	}
	if out, _, _ := run(t, "pin", "ls", "--admin", p.AdminURL()); !strings.Contains(out, "library/other:1") || !strings.Contains(out, "docker.io: 2 pins hold") {
		t.Errorf("pin ls table:\n%s", out)
	}

	// Pins live in the store: a restarted process has them.
	p.Stop()
	p = ts.StartProxyConfig(t, cfg)
	if ans := pinsOf(t, p.AdminURL()); len(ans.Upstreams[0].Pins) != 2 {
		t.Fatalf("after a restart: %+v, want both pins", ans)
	}
	if _, stderr, code := run(t, "pin", "rm", "--admin", p.AdminURL(), "--upstream", "docker.io", "library/other:1"); code != 0 {
		t.Fatalf("pin rm: exit %d: %s", code, stderr)
	}
	if _, stderr, code := run(t, "pin", "rm", "--admin", p.AdminURL(), "library/other:1"); code == 0 || !strings.Contains(stderr, "404") {
		t.Errorf("second pin rm: exit %d, %q; want a 404", code, stderr)
	}
	if ans := pinsOf(t, p.AdminURL()); len(ans.Upstreams[0].Pins) != 1 || ans.Upstreams[0].Pins[0].Ref != "library/app:1" {
		t.Errorf("after pin rm: %+v", ans)
	}
}

// Pins that alone hold more than max_size are refused: by pin add at run
// time (a 409 saying so), and at start (exit 2 naming upstreams[0].pins).
// Pins from the config are listed, and cannot be removed at run time.
func TestPinsOverMaxSizeAreRefused(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, up, "library/app:1", 1, 256<<10)
	ts.PushImage(t, up, "library/small:1", 1, 1024)
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up, Tweak: func(u *config.Upstream) {
		u.MaxSize = 128 << 10
		u.Pins = []string{"library/small:1"}
	}})
	p := ts.StartProxyConfig(t, cfg)
	if err := ts.PullVerified(&http.Client{Timeout: 30 * time.Second}, p.URL("docker.io"), "library/app", "1"); err != nil {
		t.Fatal(err)
	}
	p.Settle(t)
	code, body := pinAPI(t, http.MethodPost, p.AdminURL()+"/api/v1/pins", `{"ref": "docker.io/library/app:1"}`)
	if code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "over max_size 128KiB") {
		t.Errorf("pin over max_size: %d %v, want 409 saying it is over max_size", code, body)
	}
	if _, stderr, code := run(t, "pin", "add", "--admin", p.AdminURL(), "docker.io/library/app:1"); code == 0 || !strings.Contains(stderr, "over max_size") {
		t.Errorf("pin add over max_size: exit %d, %q", code, stderr)
	}
	code, body = pinAPI(t, http.MethodDelete, p.AdminURL()+"/api/v1/pins?ref=docker.io/library/small:1", "")
	if code != http.StatusConflict || !strings.Contains(fmt.Sprint(body["error"]), "upstreams[].pins") {
		t.Errorf("removing a config pin: %d %v, want 409 pointing at the config", code, body)
	}
	if ans := pinsOf(t, p.AdminURL()); len(ans.Upstreams[0].Pins) != 1 || ans.Upstreams[0].Pins[0].Source != "config" {
		t.Errorf("pins: %+v, want only the config's", ans)
	}
	// A reload that pins app:1 in the config is refused; the old config
	// keeps serving.
	next := cfg
	next.Upstreams = slices.Clone(cfg.Upstreams)
	next.Upstreams[0].Pins = []string{"library/small:1", "library/app:1"}
	if err := p.Process.Reload(context.Background(), next); err == nil || !strings.Contains(err.Error(), "upstreams[0].pins: pins hold") {
		t.Errorf("reload with pins over max_size: %v, want it refused naming upstreams[0].pins", err)
	}
	if ans := pinsOf(t, p.AdminURL()); len(ans.Upstreams[0].Pins) != 1 {
		t.Errorf("after a refused reload: %+v, want the old config's one pin", ans)
	}
	p.Stop()

	// The same store, now with app:1 pinned in the config.
	u := cfg.Upstreams[0]
	file := writeFile(t, t.TempDir(), "c.yaml", fmt.Sprintf(`data_dir: %s
admin: {listen: %q}
upstreams:
  - name: docker.io
    listen: %q
    remote: %s
    ca_file: %s
    storage: %s
    max_size: 128KiB
    pins: [library/small:1, library/app:1]
`, cfg.DataDir, ts.FreeAddr(t), ts.FreeAddr(t), u.Remote, u.CAFile, u.Storage.Path))
	var stderr string
	_, stderr, code = run(t, "serve", "--config", file)
	if code != 2 || !strings.Contains(stderr, "upstreams[0].pins: pins hold") || !strings.Contains(stderr, "over max_size 128KiB") {
		t.Errorf("serve with pins over max_size: exit %d, %q; want 2 naming upstreams[0].pins", code, stderr)
	}
}
