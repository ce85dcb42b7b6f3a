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

// TestRestartedHolderTakesItsOwnLeaseOver kills -9 the replica fetching a
// blob and starts it again on the same address, with a lease TTL far
// longer than a pull should take. The lease its previous process left
// names the replica's own address, which answers, so no refusal shows the
// holder dead: the restarted replica sees the hold is an earlier
// process's, revokes it and fetches at once, instead of its clients
// waiting out the TTL.
func TestRestartedHolderTakesItsOwnLeaseOver(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 16 << 20
	const ttl = 30 * time.Second
	img := up.Push(t, "team/big:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	// The first fetch runs slowly, so it is still running at the kill.
	_, sent := recordRanges(up, layer, ts.Throttle(2<<20))
	c := startCluster(t, up, 1, options{leaseTTL: ttl.String()})
	r := c.replicas[0]

	killed := make(chan error, 1)
	go func() { _, err := getBlob(r, "team/big", layer); killed <- err }()
	if holder := c.waitLease(t, layer); holder != r.peer {
		t.Fatalf("lease held by %q, want the replica's %q", holder, r.peer)
	}
	// Killed once its fetch is under way: killed before, the restarted
	// replica's fetch would be the first, the slow one.
	ts.WaitUntil(t, 20*time.Second, "the upstream sends the blob", func() (bool, string) {
		return sent.Load() >= 1<<20, fmt.Sprint(sent.Load())
	})
	r.child.Kill(t)
	if err := <-killed; err == nil {
		t.Fatal("the killed replica's client got the whole blob: the kill came too late to test anything")
	}
	r.start(t)

	start := time.Now()
	wrong, err := getBlob(r, "team/big", layer)
	took := time.Since(start)
	if err != nil || wrong {
		t.Fatalf("pull through the restarted replica: wrong bytes %v, %v", wrong, err)
	}
	t.Logf("whole verified blob %v after the restart", took)
	if limit := ttl / 2; took > limit {
		t.Errorf("the restarted replica's client had the blob after %v, want under %v (lease_ttl %v): its previous process's lease was waited out", took, limit, ttl)
	}
	if n := r.metric(t, "multiproxy_fill_takeovers_total", nil); n != 1 {
		t.Errorf("the restarted replica counted %v takeovers, want 1", n)
	}
	if n := r.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 0 {
		t.Errorf("the restarted replica filled %v times without the lease, want 0", n)
	}
	c.checkBucket(t)
}
