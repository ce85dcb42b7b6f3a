package ha

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestKilledHolderIsTakenOverAtOnce kills -9 the replica fetching a blob
// halfway, with a lease TTL far longer than the pull should take: the
// other replica, streaming its fill, finds the holder's peer port refusing
// connections, revokes the dead holder's lease and takes it over from the
// bytes it has. Its client gets the whole verified blob well before the
// dead holder's lease would have expired, and the cluster fetches little
// more than the blob once.
func TestKilledHolderIsTakenOverAtOnce(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 16 << 20
	const ttl = 30 * time.Second
	img := up.Push(t, "team/big:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	// The holder's upstream sends slowly but never stops: its fill is
	// still running when it is killed, whatever the machine's load (a
	// held body would time the fill out after the upstream timeout, and
	// the lease would be released, not taken over).
	ranges, sent := recordRanges(up, layer, ts.Throttle(2<<20))
	c := startCluster(t, up, 2, options{leaseTTL: ttl.String()})

	killed, survived := make(chan error, 1), make(chan error, 1)
	go func() { _, err := getBlob(c.replicas[0], "team/big", layer); killed <- err }()
	owner, other := c.replicas[0], c.replicas[1]
	if holder := c.waitLease(t, layer); holder != owner.peer {
		t.Fatalf("lease held by %q, want replica 0's %q", holder, owner.peer)
	}
	var got atomic.Int64
	go func() { survived <- getBlobCounting(other, "team/big", layer, &got) }()
	ts.WaitUntil(t, 20*time.Second, "replica 1's client has a quarter of the blob", func() (bool, string) {
		return got.Load() >= size/4, fmt.Sprint(got.Load())
	})
	owner.child.Kill(t)
	kill := time.Now()
	if err := <-killed; err == nil {
		t.Fatal("the killed replica's client got the whole blob: the kill came too late to test anything")
	}
	if at := got.Load(); at >= size {
		t.Fatalf("replica 1's client had all %d bytes at the kill: nothing left to take over", at)
	}

	var err error
	select {
	case err = <-survived:
	case <-time.After(2 * ttl):
		t.Fatalf("the surviving replica's client hangs %v after the holder's death", 2*ttl)
	}
	took := time.Since(kill)
	if err != nil {
		t.Fatalf("the surviving replica's client saw the holder's death: %v", err)
	}
	rs := ranges()
	t.Logf("whole verified blob %v after the kill; upstream GETs with ranges %q, %d bytes sent for %d", took, rs, sent.Load(), size)
	// Past the dead holder's lease, the wait would be between two thirds
	// of the TTL (its last renewal) and the whole of it.
	if limit := ttl / 2; took > limit {
		t.Errorf("the surviving replica's client had the blob %v after the kill, want under %v (lease_ttl %v): the dead holder's lease was waited out", took, limit, ttl)
	}
	if got := sent.Load(); float64(got) > 1.1*size {
		t.Errorf("the upstream sent %d bytes for a %d-byte blob (%.2f×), want ≤ 1.1×", got, size, float64(got)/size)
	}
	if n := other.metric(t, "multiproxy_fill_takeovers_total", nil); n != 1 {
		t.Errorf("replica 1 counted %v takeovers in multiproxy_fill_takeovers_total, want 1", n)
	}
	if n := other.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 0 {
		t.Errorf("replica 1 filled %v times without the lease, want 0: it took the dead holder's over", n)
	}
	if n := strings.Count(other.child.Logs(), "fill lease holder is gone; taking its lease over"); n != 1 {
		t.Errorf("replica 1 logged the takeover %d times, want once", n)
	}
	if wrong, err := getBlob(other, "team/big", layer); err != nil || wrong {
		t.Errorf("pull after the takeover: %v", err)
	}
	c.checkBucket(t)
}
