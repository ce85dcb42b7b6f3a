package coord_test

import (
	"context"
	"errors"
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

// One collector in the cluster at a time.
func TestGCLeaseOneCollectorAtATime(t *testing.T) {
	r := ts.StartRedis(t)
	a := replica(t, r, "a:1", 10*time.Second)
	b := replica(t, r, "b:1", 10*time.Second)
	ctx := context.Background()
	la, _, err := a.AcquireGC(ctx, "docker.io")
	if err != nil || la == nil {
		t.Fatalf("AcquireGC = %v, %v", la, err)
	}
	// Another upstream's collection waits too: the cluster collects one
	// upstream at a time, as one process does.
	if lb, holder, err := b.AcquireGC(ctx, "ghcr.io"); err != nil || lb != nil || holder != "a:1" {
		t.Fatalf("second AcquireGC = %v, %q, %v; want none, held by a:1", lb, holder, err)
	}
	if err := a.BeginCollection(ctx, "docker.io"); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 5*time.Second, "b learns of the collection", func() bool { return b.Collecting("docker.io") })
	if b.Collecting("ghcr.io") {
		t.Error("b thinks ghcr.io is being collected")
	}
	if err := b.Claim(ctx, "docker.io", blob); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Claimed(ctx, "docker.io", blob); err != nil || !ok {
		t.Errorf("Claimed = %v, %v; want b's claim seen", ok, err)
	}
	if err := a.EndCollection(ctx, "docker.io"); err != nil {
		t.Fatal(err)
	}
	la.Release()
	if lb, _, err := b.AcquireGC(ctx, "ghcr.io"); err != nil || lb == nil {
		t.Fatalf("AcquireGC after release = %v, %v", lb, err)
	} else {
		lb.Release()
	}
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
