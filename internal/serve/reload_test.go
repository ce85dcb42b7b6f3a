package serve_test

import (
	"context"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A reload that removes an upstream drains it in the background while the
// next reload may already replace the config: the removed upstream's port
// closes, the kept one goes on serving pulls, and (under -race) the drain
// reads nothing the second reload writes.
func TestReloadRemovingAnUpstreamWhileAnotherReloadRuns(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 2, 32<<10)
	p := ts.StartProxy(t,
		ts.ProxyUpstream{Name: "kept", Reg: up},
		ts.ProxyUpstream{Name: "gone", Reg: up})
	goneAddr := p.Addr("gone")

	one := p.Config
	one.Upstreams = slices.Clone(p.Config.Upstreams[:1])
	if err := p.Process.Reload(context.Background(), one); err != nil {
		t.Fatalf("reload removing an upstream: %v", err)
	}
	// At once, while the removed upstream drains: a second reload that
	// changes the drain time itself.
	two := one
	two.ShutdownTimeout = one.ShutdownTimeout + time.Second
	if err := p.Process.Reload(context.Background(), two); err != nil {
		t.Fatalf("second reload: %v", err)
	}

	ts.WaitFor(t, 10*time.Second, "the removed upstream's port closes", func() bool {
		c, err := net.DialTimeout("tcp", goneAddr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if p.Addr("gone") != "" {
		t.Errorf("the removed upstream still has an address: %s", p.Addr("gone"))
	}
	c := &http.Client{Timeout: 30 * time.Second}
	if err := ts.PullVerified(c, p.URL("kept"), "library/app", ts.Digest(t, img)); err != nil {
		t.Fatalf("pull through the kept upstream after both reloads: %v", err)
	}
}
