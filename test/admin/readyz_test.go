package admin

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

func TestReadyzFollowsUpstreamOutages(t *testing.T) {
	hub := ts.StartRegistry(t, ts.RegistryOptions{})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, ghcr, "team/tool:v1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: hub}, ts.ProxyUpstream{Name: "ghcr.io", Reg: ghcr})
	// A detected outage takes at most one probe interval to be probed,
	// one upstream timeout for the probe to fail, and polling slack.
	within := 2*probeInterval + p.Config.Upstreams[0].Timeout + time.Second

	// Nothing contacts an upstream before serving: the first probe, sent
	// at start, tells.
	var r readyz
	ts.WaitUntil(t, within, "both upstreams reachable", func() (bool, string) {
		r = getReadyz(t, p)
		return r.state("docker.io") == "reachable" && r.state("ghcr.io") == "reachable", fmt.Sprintf("%+v", r)
	})
	if r.code != http.StatusOK || !r.Ready {
		t.Fatalf("at start: %+v", r)
	}
	for _, u := range r.Upstreams {
		if !u.Serving || u.Listen != p.Addr(u.Name) || u.Since.IsZero() {
			t.Errorf("at start, %s: %+v", u.Name, u)
		}
	}

	stopped := time.Now()
	hub.Stop()
	took := ts.WaitUntil(t, within, "docker.io down on /readyz", func() (bool, string) {
		r = getReadyz(t, p)
		return r.state("docker.io") == "down", fmt.Sprintf("%+v", r)
	})
	t.Logf("docker.io reported down %v after its registry stopped", took)
	// The cache keeps serving, so the process stays ready; the other
	// upstream is not affected.
	if r.code != http.StatusOK || !r.Ready || r.state("ghcr.io") != "reachable" {
		t.Errorf("with docker.io down: %+v", r)
	}
	for _, u := range r.Upstreams {
		if u.Name == "docker.io" {
			if u.Since.Before(stopped.Add(-time.Second)) || u.LastError == "" {
				t.Errorf("docker.io down since %v (stopped at %v), last error %q", u.Since, stopped, u.LastError)
			}
		}
	}

	hub.Start()
	took = ts.WaitUntil(t, within, "docker.io reachable again on /readyz", func() (bool, string) {
		r = getReadyz(t, p)
		return r.state("docker.io") == "reachable", fmt.Sprintf("%+v", r)
	})
	t.Logf("docker.io reported reachable %v after its registry came back", took)

	// A tag served stale shows at once as "stale": the upstream fails, and
	// clients are being answered from the cache.
	accept := strings.Join(upstream.ManifestAccept, ", ")
	fetch(t, p.URL("ghcr.io")+"/v2/team/tool/manifests/v1", accept)
	ghcr.Stop()
	fetch(t, p.URL("ghcr.io")+"/v2/team/tool/manifests/v1", accept)
	if r = getReadyz(t, p); r.state("ghcr.io") != "stale" || r.state("docker.io") != "reachable" {
		t.Errorf("after a stale serve: %+v", r)
	}
	st := upstreamStatus(t, status(t, p), "ghcr.io")
	if st.StaleServes != 1 || st.LastStale == nil || len(st.History) < 2 {
		t.Errorf("status after a stale serve: %d stale serves, last %v, history %+v", st.StaleServes, st.LastStale, st.History)
	}

	// Draining: listeners closed, not ready.
	p.Stop()
	if ready, _ := p.Process.Ready(); ready {
		t.Error("ready after shutdown")
	}
}

func TestReadyzReportsAnUpstreamDownAtStart(t *testing.T) {
	reg := ts.NewRegistry(t, ts.RegistryOptions{}) // never started
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	var r readyz
	ts.WaitUntil(t, 2*time.Second, "docker.io down", func() (bool, string) {
		r = getReadyz(t, p)
		return r.state("docker.io") == "down", fmt.Sprintf("%+v", r)
	})
	if r.code != http.StatusOK || !r.Ready {
		t.Errorf("an upstream down at start made the process unready: %+v", r)
	}
	reg.Start()
	ts.WaitUntil(t, 2*probeInterval+2*time.Second, "docker.io reachable", func() (bool, string) {
		r = getReadyz(t, p)
		return r.state("docker.io") == "reachable", fmt.Sprintf("%+v", r)
	})
}
