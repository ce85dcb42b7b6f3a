package coord_test

import (
	"context"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/coord"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func sentinelReplica(t *testing.T, s *ts.RedisSentinel, self string, ttl time.Duration) *coord.Coordinator {
	t.Helper()
	c := coord.New(coord.Options{SentinelMaster: s.MasterName, SentinelAddrs: []string{s.Addr},
		SentinelPassword: s.Password, Password: s.Servers[0].Password, Self: self, TTL: ttl})
	t.Cleanup(func() { _ = c.Close() })
	if !c.Up() {
		t.Fatalf("coordinator %s: Redis not up through the sentinel: %v", self, c.Err())
	}
	return c
}

// Replicas pointed at a Sentinel follow it when it fails the master over:
// a lease held across the failover stays held (its renewals reach the new
// master), and leases are taken, refused and released there afterwards.
func TestLeasesSurviveASentinelFailover(t *testing.T) {
	s := ts.StartRedisSentinel(t)
	// Renewals sent between the replica's promotion and the Sentinel's
	// announcing it (about a second here) land on the old master and are
	// lost with it, so a lease outlives a failover only if its TTL is
	// longer than that; lease_ttl's default is 10s.
	const ttl = 3 * time.Second
	a := sentinelReplica(t, s, "a:1", ttl)
	b := sentinelReplica(t, s, "b:1", ttl)
	ctx := context.Background()
	before := s.Master(t)

	held, err := a.AcquireFill(ctx, "docker.io", blob)
	if err != nil || held.Lease == nil {
		t.Fatalf("AcquireFill before the failover = %+v, %v", held, err)
	}
	// Redis replicates asynchronously: a write the replica has not got
	// yet is lost in a failover, whoever wrote it. Wait for the replica to
	// have the lease, so that what is tested is the renewals' way to the
	// new master, not a replica still in its first sync.
	if n, err := s.Server(t, before).Client().Do(ctx, "WAIT", 1, 10000).Int(); err != nil || n < 1 {
		t.Fatalf("the replica did not acknowledge the lease: %d, %v", n, err)
	}
	after := s.Failover(t)
	if after == before {
		t.Fatalf("the sentinel still names %s after the failover", before)
	}

	// The clients reconnect to the new master: every replica answers
	// for the lease held across the failover with its holder.
	ts.WaitUntil(t, 30*time.Second, "b reads the lease on the new master", func() (bool, string) {
		got, err := b.AcquireFill(ctx, "docker.io", blob)
		if err != nil {
			return false, err.Error()
		}
		if got.Lease != nil {
			t.Fatal("b took the lease a holds across the failover")
		}
		return got.Owner == "a:1", "owner " + got.Owner
	})
	// Two TTLs later it is still a's: its renewals reach the new master.
	deadline := time.Now().Add(2 * ttl)
	for time.Now().Before(deadline) {
		got, err := b.AcquireFill(ctx, "docker.io", blob)
		if err == nil && got.Lease != nil {
			t.Fatal("a's lease expired after the failover: its renewals did not reach the new master")
		}
		time.Sleep(100 * time.Millisecond)
	}
	newMaster := s.Server(t, after).Client()
	if n, err := newMaster.Exists(ctx, "multiproxy:fill:docker.io:"+blob.String()).Result(); err != nil || n != 1 {
		t.Fatalf("the lease is not on the new master %s: %d, %v", after, n, err)
	}

	// Released on the new master: b takes it at once, and holds it.
	held.Lease.Release()
	got, err := b.AcquireFill(ctx, "docker.io", blob)
	if err != nil || got.Lease == nil {
		t.Fatalf("AcquireFill after the release = %+v, %v; want the lease", got, err)
	}
	if other, err := a.AcquireFill(ctx, "docker.io", blob); err != nil || other.Lease != nil || other.Owner != "b:1" {
		t.Fatalf("a's AcquireFill of b's lease = %+v, %v; want owner b:1", other, err)
	}
	got.Lease.Release()
	gc, _, err := a.AcquireGC(ctx, "docker.io")
	if err != nil || gc == nil {
		t.Fatalf("AcquireGC after the failover = %v, %v", gc, err)
	}
	gc.Release()
}
