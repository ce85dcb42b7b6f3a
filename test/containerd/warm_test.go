package containerd

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/admin"
	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// TestWarmedImagesPullWithTheUpstreamDown is the last step of the
// issue's end to end, on a node: images warmed through the admin API
// (POST /api/v1/warm) before anyone pulled them are what containerd gets
// through the generated hosts.toml once the upstream is down. Every
// server the upstream has (registry, token issuer, CDN, front) is
// stopped, so containerd's fallback to the upstream cannot be what
// served the pull, and nothing reached multiproxy from containerd before
// the warm: the warm alone filled the cache.
func TestWarmedImagesPullWithTheUpstreamDown(t *testing.T) {
	requireContainerd(t)
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/warmed:1", 3, 256<<10)
		idx := up.PushIndex(t, "library/warmed-multi:1")
		r := startRig(t, up, ctrdcfg.V2)

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		refs := []string{up.Ref("library/warmed:1"), up.Ref("library/warmed-multi:1")}
		var sum warm.Event
		var failed []warm.Event
		err := admin.Client{Base: r.p.AdminURL()}.Warm(ctx, warm.Request{Images: refs}, func(e warm.Event) {
			switch e.Event {
			case warm.EventSummary:
				sum = e
			case warm.EventFailed, warm.EventSkipped, warm.EventStopped:
				failed = append(failed, e)
			}
		})
		if err != nil || sum.Cached != len(refs) {
			t.Fatalf("warm: %v; summary %+v; failures %+v", err, sum, failed)
		}
		r.p.Settle(t)

		up.Registry.Stop()
		if up.Front != nil {
			up.Front.Stop()
		}
		for _, ref := range refs {
			r.d.pull(ref, r.hostsDir)
		}
		// The warm's default platform is linux/amd64, the one ctr pulls.
		requireServedByCache(t, r.p, up.Host, img, ts.IndexChild(t, idx, "amd64"))
		if n := direct(r.api); n != 0 {
			t.Errorf("containerd sent %d requests straight to the registry", n)
		}
		out, err := r.d.ctr(10*time.Second, "images", "ls", "-q")
		if err != nil {
			t.Fatalf("ctr images ls: %v\n%s", err, out)
		}
		for _, ref := range refs {
			if !strings.Contains(out, ref) {
				t.Errorf("containerd does not list %s:\n%s", ref, out)
			}
		}
	})
}
