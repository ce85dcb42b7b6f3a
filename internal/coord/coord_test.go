package coord_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/coord"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

const blob = digest.Digest("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")

func replica(t *testing.T, r *ts.Redis, self string, ttl time.Duration) *coord.Coordinator {
	t.Helper()
	c := coord.New(coord.Options{Addr: r.Addr, Password: r.Password, Self: self, TTL: ttl})
	t.Cleanup(func() { _ = c.Close() })
	if !c.Up() {
		t.Fatalf("coordinator %s: Redis not up: %v", self, c.Err())
	}
	return c
}

// One replica holds a blob's fill lease; the others learn who, so they can
// stream its fill. Releasing hands it over at once.
func TestFillLeaseIsExclusiveAndNamesItsHolder(t *testing.T) {
	r := ts.StartRedis(t)
	a := replica(t, r, "10.0.0.1:5098", 10*time.Second)
	b := replica(t, r, "10.0.0.2:5098", 10*time.Second)
	ctx := context.Background()

	la, err := a.AcquireFill(ctx, "docker.io", blob)
	if err != nil || la.Lease == nil {
		t.Fatalf("first AcquireFill = %+v, %v; want the lease", la, err)
	}
	lb, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || lb.Lease != nil || lb.Owner != "10.0.0.1:5098" {
		t.Fatalf("second AcquireFill = %+v, %v; want no lease, owner 10.0.0.1:5098", lb, err)
	}
	// Leases are per upstream: the same digest of another is free.
	if other, err := b.AcquireFill(ctx, "ghcr.io", blob); err != nil || other.Lease == nil {
		t.Fatalf("AcquireFill of another upstream = %+v, %v; want the lease", other, err)
	} else {
		other.Lease.Release()
	}
	la.Lease.Release()
	lb, err = b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || lb.Lease == nil {
		t.Fatalf("AcquireFill after release = %+v, %v; want the lease", lb, err)
	}
	lb.Lease.Release()
}

// A holder that keeps running keeps its lease past the TTL (renewals); one
// that stops renewing (a crash) loses it once the TTL runs out.
func TestFillLeaseRenewsWhileHeldAndExpiresWhenItsHolderDies(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	la, err := a.AcquireFill(ctx, "docker.io", blob)
	if err != nil || la.Lease == nil {
		t.Fatalf("AcquireFill = %+v, %v", la, err)
	}
	// Three TTLs later it is still a's: the renewals ran.
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		lb, err := b.AcquireFill(ctx, "docker.io", blob)
		if err != nil || lb.Lease != nil {
			t.Fatalf("lease taken from a live holder: %+v, %v", lb, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// a dies: its process is gone, nothing renews. Closing the client
	// without Release is what a kill -9 leaves in Redis.
	_ = a.Close()
	ts.WaitUntil(t, 5*ttl, "another replica takes the expired lease over", func() (bool, string) {
		lb, err := b.AcquireFill(ctx, "docker.io", blob)
		if err != nil {
			return false, err.Error()
		}
		if lb.Lease != nil {
			lb.Lease.Release()
			return true, ""
		}
		return false, "held by " + lb.Owner
	})
}

// A replica that finds a fill lease's holder dead revokes that holder's
// lease and takes the blob over at once, not a TTL later. A revocation
// that comes late, once the lease changed hands, removes nothing: two
// replicas that both saw the dead holder cannot take the lease from the
// one of them that took it over first.
func TestRevokeFillRemovesOnlyTheHolderItNames(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = time.Minute // a takeover that waited for it would time the test out
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	c := replica(t, r, "c:1", ttl)
	ctx := context.Background()
	if la, err := a.AcquireFill(ctx, "docker.io", blob); err != nil || la.Lease == nil {
		t.Fatalf("AcquireFill = %+v, %v", la, err)
	}
	_ = a.Close() // a kill -9: the lease stays in Redis for a minute
	seen, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || seen.Lease != nil || seen.Owner != "a:1" || seen.Holder == "" {
		t.Fatalf("AcquireFill of a held lease = %+v, %v; want owner a:1 and its holder", seen, err)
	}
	if ok, err := b.RevokeFill(ctx, "docker.io", blob, seen.Holder); err != nil || !ok {
		t.Fatalf("RevokeFill of the dead holder = %v, %v; want it removed", ok, err)
	}
	lb, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || lb.Lease == nil {
		t.Fatalf("AcquireFill after the revocation = %+v, %v; want the lease at once", lb, err)
	}
	defer lb.Lease.Release()
	// c saw a's hold too, before b took over.
	if ok, err := c.RevokeFill(ctx, "docker.io", blob, seen.Holder); err != nil || ok {
		t.Fatalf("late RevokeFill of a's holder = %v, %v; want nothing removed", ok, err)
	}
	if lc, err := c.AcquireFill(ctx, "docker.io", blob); err != nil || lc.Lease != nil || lc.Owner != "b:1" {
		t.Fatalf("AcquireFill after a late revocation = %+v, %v; want it still b's", lc, err)
	}
}

// A replica restarted on its own address finds the lease its previous
// process left: Earlier says so, since no refusal ever will (the address
// answers: it is its own). Another replica's hold, and a second look by
// the holding process itself, are not earlier.
func TestFillLeaseLeftByAnEarlierProcessIsMarked(t *testing.T) {
	r := ts.StartRedis(t)
	ctx := context.Background()
	before := replica(t, r, "a:1", time.Minute)
	if l, err := before.AcquireFill(ctx, "docker.io", blob); err != nil || l.Lease == nil {
		t.Fatalf("AcquireFill = %+v, %v", l, err)
	}
	if again, err := before.AcquireFill(ctx, "docker.io", blob); err != nil || again.Earlier || again.Owner != "a:1" {
		t.Fatalf("the holding process asking again = %+v, %v; want its own hold, not an earlier one", again, err)
	}
	_ = before.Close() // a kill -9: the lease stays for a minute
	after := replica(t, r, "a:1", time.Minute)
	seen, err := after.AcquireFill(ctx, "docker.io", blob)
	if err != nil || seen.Lease != nil || !seen.Earlier {
		t.Fatalf("AcquireFill by the restarted replica = %+v, %v; want the lease marked Earlier", seen, err)
	}
	other := replica(t, r, "b:1", time.Minute)
	if o, err := other.AcquireFill(ctx, "docker.io", blob); err != nil || o.Earlier {
		t.Fatalf("AcquireFill by another replica = %+v, %v; want a's hold, not an earlier one of b's", o, err)
	}
	if ok, err := after.RevokeFill(ctx, "docker.io", blob, seen.Holder); err != nil || !ok {
		t.Fatalf("RevokeFill of the earlier process's hold = %v, %v", ok, err)
	}
	if l, err := after.AcquireFill(ctx, "docker.io", blob); err != nil || l.Lease == nil {
		t.Fatalf("AcquireFill after the revocation = %+v, %v; want the lease at once", l, err)
	} else {
		l.Lease.Release()
	}
}

// A holder revoked while alive (its peer port refused, its process did
// not die) finds out at its next renewal and stops renewing; its Release
// then leaves the lease of the replica that took over alone.
func TestRevokedLiveHolderLosesItsLeaseAndReleasesNothingElse(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 1500 * time.Millisecond
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	la, err := a.AcquireFill(ctx, "docker.io", blob)
	if err != nil || la.Lease == nil {
		t.Fatalf("AcquireFill = %+v, %v", la, err)
	}
	seen, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || seen.Holder == "" {
		t.Fatalf("AcquireFill of a held lease = %+v, %v", seen, err)
	}
	if ok, err := b.RevokeFill(ctx, "docker.io", blob, seen.Holder); err != nil || !ok {
		t.Fatalf("RevokeFill = %v, %v; want it removed", ok, err)
	}
	lb, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || lb.Lease == nil {
		t.Fatalf("AcquireFill after the revocation = %+v, %v; want the lease", lb, err)
	}
	defer lb.Lease.Release()
	select {
	case <-la.Lease.Lost():
	case <-time.After(3 * ttl):
		t.Fatal("the revoked holder's lease was not lost at its next renewal")
	}
	la.Lease.Release()
	if lc, err := a.AcquireFill(ctx, "docker.io", blob); err != nil || lc.Lease != nil || lc.Owner != "b:1" {
		t.Fatalf("AcquireFill after the revoked holder's Release = %+v, %v; want it still b's", lc, err)
	}
}

// settledGC waits out the TTL a new Redis's data must age before the first
// collection, then takes the collection lease.
func settledGC(t *testing.T, c *coord.Coordinator, upstream string, within time.Duration) *coord.GCLease {
	t.Helper()
	var l *coord.GCLease
	ts.WaitUntil(t, within, "the collection lease, once Redis's data is a TTL old", func() (bool, string) {
		var err error
		var holder string
		l, holder, err = c.AcquireGC(context.Background(), upstream)
		if err != nil {
			return false, err.Error()
		}
		return l != nil, "held by " + holder
	})
	return l
}

// One collector in the cluster at a time, and replicas claim into its
// collection.
func TestGCLeaseOneCollectorAtATime(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 2 * time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	// Redis is new: no collection starts before its data is a TTL old.
	if _, _, err := a.AcquireGC(ctx, "docker.io"); !errors.Is(err, coord.ErrSettling) {
		t.Fatalf("AcquireGC on a new Redis: %v, want ErrSettling", err)
	}
	la := settledGC(t, a, "docker.io", 5*ttl)
	// Another upstream's collection waits too: the cluster collects one
	// upstream at a time, as one process does.
	if lb, holder, err := b.AcquireGC(ctx, "ghcr.io"); err != nil || lb != nil || holder != "a:1" {
		t.Fatalf("second AcquireGC = %v, %q, %v; want none, held by a:1", lb, holder, err)
	}
	if err := la.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Check(ctx); err != nil {
		t.Fatalf("Check of a held lease: %v", err)
	}
	if err := b.Claim(ctx, "docker.io", blob); err != nil {
		t.Fatal(err)
	}
	ts.WaitUntil(t, 5*time.Second, "b's claim reaches the collection", func() (bool, string) {
		ok, err := la.Claimed(ctx, blob)
		return ok && err == nil, fmt.Sprint(ok, err)
	})
	if err := la.End(ctx); err != nil {
		t.Fatal(err)
	}
	la.Release()
	lb, _, err := b.AcquireGC(ctx, "ghcr.io")
	if err != nil || lb == nil {
		t.Fatalf("AcquireGC after release = %v, %v", lb, err)
	}
	ta, _ := strconv.ParseInt(la.Token(), 10, 64)
	tb, _ := strconv.ParseInt(lb.Token(), 10, 64)
	if tb <= ta {
		t.Errorf("tokens %s then %s: want increasing", la.Token(), lb.Token())
	}
	lb.Release()
	// Once a collection ended, the replicas know none runs, and claim
	// nothing.
	ts.WaitFor(t, 5*time.Second, "b learns the collection ended", func() bool {
		_ = b.Claim(ctx, "docker.io", digest.Digest("sha256:"+strings.Repeat("1", 64)))
		return b.Pending("docker.io") == 0
	})
}

// A collector whose Redis restarts empty loses its lease at once and finds
// out before its next batch; no collection starts for a TTL; what replicas
// served meanwhile goes to the next collection.
func TestRedisRestartFencesTheCollectorAndKeepsClaims(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 2 * time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	la := settledGC(t, a, "docker.io", 5*ttl)
	if err := la.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	r.Stop(t)
	served := digest.Digest("sha256:" + strings.Repeat("2", 64))
	// Redis down: the claim cannot be made; it is kept.
	_ = b.Claim(ctx, "docker.io", served)
	r.Start(t)
	select {
	case <-la.Lost():
	case <-time.After(5 * ttl):
		t.Fatal("the collector did not find its lease lost after Redis restarted empty")
	}
	if err := la.Check(ctx); !errors.Is(err, coord.ErrLeaseLost) {
		t.Fatalf("Check after the restart: %v, want ErrLeaseLost", err)
	}
	ts.WaitFor(t, 5*time.Second, "Redis answers again", b.Up)
	if _, _, err := b.AcquireGC(ctx, "docker.io"); !errors.Is(err, coord.ErrSettling) {
		t.Fatalf("AcquireGC just after the restart: %v, want ErrSettling", err)
	}
	lb := settledGC(t, b, "docker.io", 5*ttl)
	defer lb.Release()
	if err := lb.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	ts.WaitUntil(t, 5*time.Second, "the claim kept while Redis was down reaches the new collection", func() (bool, string) {
		ok, err := lb.Claimed(ctx, served)
		return ok && err == nil, fmt.Sprint(ok, err)
	})
}

// A collector paused past the TTL (SIGSTOP, a long GC pause) wakes to find
// its lease lost by its own clock, before any call to Redis; another
// collection ran meanwhile under a new token, which the old one's Check
// refuses.
func TestPausedCollectorIsFenced(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 2 * time.Second
	px := newCutProxy(t, r.Addr)
	a := coord.New(coord.Options{Addr: px.addr, Password: r.Password, Self: "a:1", TTL: ttl})
	t.Cleanup(func() { _ = a.Close() })
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	la := settledGC(t, a, "docker.io", 5*ttl)
	if err := la.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	// The pause, as Redis sees it: nothing from a.
	px.cut()
	lb := settledGC(t, b, "docker.io", 5*ttl)
	defer lb.Release()
	if err := lb.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la.Valid(); !errors.Is(err, coord.ErrLeaseLost) {
		t.Errorf("Valid of the paused collector: %v, want ErrLeaseLost", err)
	}
	px.restore()
	ts.WaitFor(t, 5*time.Second, "a reaches Redis again", a.Up)
	if err := la.Check(ctx); !errors.Is(err, coord.ErrLeaseLost) {
		t.Errorf("Check of the paused collector: %v, want ErrLeaseLost", err)
	}
	if err := lb.Check(ctx); err != nil {
		t.Errorf("Check of the new collector: %v", err)
	}
}

// A replica whose view of the collection is a token behind (a new
// collection began since its last probe) claims into the collection
// announced now, never into the old one's set.
func TestClaimGoesToTheCollectionAnnouncedNow(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 2 * time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	ctx := context.Background()
	la := settledGC(t, a, "docker.io", 5*ttl)
	if err := la.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	ts.WaitUntil(t, 5*time.Second, "b claims into the first collection", func() (bool, string) {
		_ = b.Claim(ctx, "docker.io", blob)
		ok, err := la.Claimed(ctx, blob)
		return ok && err == nil && b.Pending("docker.io") == 0, fmt.Sprint(ok, err)
	})
	// The first collector's lease is gone (as if it expired while its
	// holder was paused) and a second collection begins, before b's next
	// probe.
	if err := r.Client().Del(ctx, "multiproxy:gc").Err(); err != nil {
		t.Fatal(err)
	}
	lc, _, err := a.AcquireGC(ctx, "docker.io")
	if err != nil || lc == nil {
		t.Fatalf("AcquireGC after the first lease went: %v, %v", lc, err)
	}
	defer lc.Release()
	if err := lc.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	served := digest.Digest("sha256:" + strings.Repeat("3", 64))
	if err := b.Claim(ctx, "docker.io", served); err != nil {
		t.Fatal(err)
	}
	if ok, err := lc.Claimed(ctx, served); err != nil || !ok {
		t.Errorf("the new collection sees b's claim: %v, %v; want true", ok, err)
	}
	if ok, _ := la.Claimed(ctx, served); ok {
		t.Error("b's claim went to the old collection's set")
	}
	if err := la.Check(ctx); !errors.Is(err, coord.ErrLeaseLost) {
		t.Errorf("Check of the old collection: %v, want ErrLeaseLost", err)
	}
}

// cutProxy forwards TCP to Redis until cut: then it drops every connection
// and refuses new ones, as a partition or a paused peer looks to Redis.
type cutProxy struct {
	addr  string
	mu    sync.Mutex
	down  bool
	conns []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &cutProxy{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// Without Redis every call fails with ErrUnavailable, so a caller fills
// alone instead of waiting, and the coordinator says so; it recovers when
// Redis is back.
func TestRedisDownMakesCallsFailFastAndRecovers(t *testing.T) {
	r := ts.StartRedis(t)
	changes := make(chan bool, 4)
	c := coord.New(coord.Options{Addr: r.Addr, Password: r.Password, Self: "a:1", TTL: time.Second,
		OnChange: func(up bool, _ error) { changes <- up }})
	t.Cleanup(func() { _ = c.Close() })
	if up := <-changes; !up {
		t.Fatal("first change is down, want up (the first probe)")
	}
	r.Stop(t)
	if up := <-changes; up {
		t.Fatal("change after Stop is up, want down")
	}
	if _, err := c.AcquireFill(context.Background(), "docker.io", blob); !errors.Is(err, coord.ErrUnavailable) {
		t.Errorf("AcquireFill with Redis down: %v, want ErrUnavailable", err)
	}
	if c.Err() == nil {
		t.Error("Err() is nil with Redis down")
	}
	r.Start(t)
	if up := <-changes; !up {
		t.Fatal("change after Start is down, want up")
	}
	if fl, err := c.AcquireFill(context.Background(), "docker.io", blob); err != nil || fl.Lease == nil {
		t.Errorf("AcquireFill after recovery = %+v, %v", fl, err)
	}
}

// Pull times are kept per upstream and repo@digest, for eviction.
func TestPullTimes(t *testing.T) {
	r := ts.StartRedis(t)
	c := replica(t, r, "a:1", time.Second)
	ctx := context.Background()
	at := time.Unix(1_700_000_000, 0)
	if err := c.RecordPull(ctx, "docker.io", "library/alpine", blob, at); err != nil {
		t.Fatal(err)
	}
	got, err := c.LastPulls(ctx, "docker.io")
	if err != nil || !got["library/alpine@"+blob.String()].Equal(at) {
		t.Fatalf("LastPulls = %v, %v", got, err)
	}
	if other, _ := c.LastPulls(ctx, "ghcr.io"); len(other) != 0 {
		t.Errorf("another upstream sees %v", other)
	}
}
