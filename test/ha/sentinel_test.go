package ha

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestSentinelFailoverPullsGoOn: replicas find Redis through a Sentinel,
// and the master dies (kill -9) while they serve pulls. Every pull
// succeeds throughout; once the Sentinel has promoted the replica, the
// cluster coordinates through the new master again: a new image's blobs
// are fetched from the upstream once for the whole cluster, none filled
// without the lease.
func TestSentinelFailoverPullsGoOn(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/old:v1", 2, 1<<20)
	up.Push(t, "team/new:v1", 2, 1<<20)
	after := up.Push(t, "team/after:v1", 3, 1<<20)
	c := startCluster(t, up, 2, options{sentinel: true, leaseTTL: "3s"})
	if err := pullAll(c.replicas[0], "team/old:v1"); err != nil {
		t.Fatal(err)
	}

	// Pulls run on every replica while the master dies and the Sentinel
	// promotes its replica.
	var pulls, failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range c.replicas {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				image := []string{"team/old:v1", "team/new:v1"}[i%2]
				if err := pullAll(r, image); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				pulls.Add(1)
			}
		})
	}
	ts.WaitFor(t, 30*time.Second, "pulls before the failover", func() bool { return pulls.Load() >= 4 })
	oldMaster := c.sentinel.Master(t)
	newMaster := c.sentinel.KillMaster(t)
	t.Logf("the sentinel promoted %s after %s died", newMaster, oldMaster)
	before := pulls.Load()
	ts.WaitFor(t, 30*time.Second, "pulls after the failover", func() bool { return pulls.Load() >= before+4 })
	close(stop)
	wg.Wait()
	t.Logf("%d pulls around the failover, %d failed", pulls.Load(), failures.Load())
	if n := failures.Load(); n > 0 {
		t.Errorf("%d of %d pulls failed around the failover; first: %v", n, pulls.Load(), firstErr.Load())
	}

	// Coordination resumes on the new master.
	for _, r := range c.replicas {
		ts.WaitUntil(t, 30*time.Second, "replica coordinating again", func() (bool, string) {
			v := r.metric(t, "multiproxy_coordination_up", nil)
			return v == 1, fmt.Sprint(v)
		})
	}
	alone := 0.0
	for _, r := range c.replicas {
		alone += r.metric(t, "multiproxy_fills_uncoordinated_total", nil)
	}
	up.Faults.ResetCounts()
	if up.CDN != nil {
		up.CDN.ResetCounts()
	}
	c.pullConcurrently(t, "pull after the failover", "team/after:v1", 4*len(c.replicas))
	c.wantEachBlobOnce(t, after)
	for _, r := range c.replicas {
		alone -= r.metric(t, "multiproxy_fills_uncoordinated_total", nil)
	}
	if alone != 0 {
		t.Errorf("%v fills after the failover ran without the lease", -alone)
	}
	// The pull records eviction ranks by are written to the new master
	// (a cached tag's pull records one; its first fetch does not).
	if err := pullAll(c.replicas[0], "team/after:v1"); err != nil {
		t.Fatal(err)
	}
	d, err := after.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ts.WaitUntil(t, 10*time.Second, "the new master records the pull", func() (bool, string) {
		ok, err := c.sentinel.Server(t, newMaster).Client().HExists(t.Context(), "multiproxy:pulls:"+upstreamName, "team/after@"+d.String()).Result()
		return err == nil && ok, fmt.Sprint(ok, err)
	})
}
