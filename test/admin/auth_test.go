package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

func TestAdminActionsNeedTheToken(t *testing.T) {
	const token = "correct horse battery staple"
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "library/app:1", 1, 1024)
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	cfg.Admin.Token = config.Secret(token)
	p := ts.StartProxyConfig(t, cfg)

	accept := strings.Join(upstream.ManifestAccept, ", ")
	manifest := p.URL("docker.io") + "/v2/library/app/manifests/1"
	fetch(t, manifest, accept) // cached now
	// With the upstream gone, the tag is served only while it is cached:
	// that is how this test sees whether a purge ran.
	reg.Stop()

	admin := p.AdminURL() + "/api/v1"
	actions := []string{
		admin + "/purge?image=docker.io/library/app:1",
		admin + "/recycle?upstream=docker.io",
		admin + "/gc?upstream=docker.io",
		admin + "/gc?upstream=docker.io&dry_run=true",
	}
	refusals := []struct {
		name          string
		authorization string
		want          int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"not a bearer token", "Basic " + token, http.StatusUnauthorized},
		{"wrong token", "Bearer not-the-token", http.StatusForbidden},
		{"token prefix", "Bearer " + token[:len(token)-1], http.StatusForbidden},
	}
	for _, r := range refusals {
		for _, url := range actions {
			code, h, body := post(t, url, r.authorization)
			if code != r.want {
				t.Errorf("%s: POST %s: %d, want %d", r.name, url, code, r.want)
			}
			if msg, _ := body["error"].(string); msg == "" {
				t.Errorf("%s: POST %s: no JSON error in %v", r.name, url, body)
			}
			if code == http.StatusUnauthorized && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: 401 without a Bearer challenge", r.name)
			}
		}
	}

	// Nothing ran: the tag is still cached, no App was recycled, no GC ran.
	fetch(t, manifest, accept)
	ran := func(name string) float64 {
		return p.Metric(t, name, map[string]string{"upstream": "docker.io"})
	}
	for _, name := range []string{"multiproxy_recycles_total", "multiproxy_gc_runs_total"} {
		if n := ran(name); n != 0 {
			t.Errorf("a refused request ran: %s = %v", name, n)
		}
	}
	if st := upstreamStatus(t, status(t, p), "docker.io"); st.LastRecycle != nil || st.LastGC != nil {
		t.Errorf("a refused request ran: last recycle %+v, last GC %+v", st.LastRecycle, st.LastGC)
	}

	// The same requests with the token do run.
	if code, _, body := post(t, actions[0], "Bearer "+token); code != http.StatusOK {
		t.Fatalf("purge with the token: %d %v", code, body)
	}
	resp, err := client.Get(manifest)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("the purged tag is still served")
	}
	reg.Start()
	if code, _, body := post(t, actions[1], "Bearer "+token); code != http.StatusOK {
		t.Errorf("recycle with the token: %d %v", code, body)
	}
	if n := p.Metric(t, "multiproxy_recycles_total", map[string]string{"upstream": "docker.io", "reason": "admin"}); n != 1 {
		t.Errorf("multiproxy_recycles_total{reason=admin} = %v after an accepted recycle, want 1: the refusal check above proves nothing", n)
	}
}
