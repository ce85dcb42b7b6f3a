package containerd

import (
	"path/filepath"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestOnePortPullsTwoUpstreams: in one-port mode every hosts.toml names the
// same mirror, and containerd's ?ns= tells multiproxy which upstream each
// request is for.
func TestOnePortPullsTwoUpstreams(t *testing.T) {
	requireContainerd(t)
	var api ts.AgentLog
	regA := ts.StartRegistry(t, ts.RegistryOptions{Wrap: api.Wrap})
	regB := ts.StartRegistry(t, ts.RegistryOptions{Wrap: api.Wrap})
	imgA := ts.PushImage(t, regA, "library/alpha:1", 1, 128<<10)
	imgB := ts.PushImage(t, regB, "team/beta:1", 1, 128<<10)

	cfg := ts.NewProxyConfig(t,
		ts.ProxyUpstream{Name: regA.Host(), Reg: regA},
		ts.ProxyUpstream{Name: regB.Host(), Reg: regB},
	)
	cfg.ListenAll = "127.0.0.1:0"
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Listen = ""
	}
	p := ts.StartProxyConfig(t, cfg)

	dir := shortDir(t)
	hostsDir := filepath.Join(dir, "certs.d")
	ups := make([]config.Upstream, len(cfg.Upstreams))
	copy(ups, cfg.Upstreams)
	files, err := ctrdcfg.GenerateHosts(ups, ctrdcfg.HostsOptions{Endpoint: p.Addr(regA.Host()), Version: ctrdcfg.V16})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrdcfg.WriteHosts(hostsDir, files, ctrdcfg.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	d := startContainerd(t, dir, criConfig(hostsDir))
	d.pull(regA.Ref("library/alpha:1"), hostsDir)
	d.pull(regB.Ref("team/beta:1"), hostsDir)

	if n := direct(&api); n != 0 {
		t.Errorf("containerd sent %d requests straight to the registries", n)
	}
	requireServedByCache(t, p, regA.Host(), imgA)
	requireServedByCache(t, p, regB.Host(), imgB)
}
