package coord_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/coord"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// Replicas that change the pins at once each do a read-modify-write under
// the pins lock, one at a time: none of their changes is lost.
func TestPinsLockMakesChangesOneAtATime(t *testing.T) {
	r := ts.StartRedis(t)
	cs := []*coord.Coordinator{
		replica(t, r, "a:1", 10*time.Second),
		replica(t, r, "b:1", 10*time.Second),
		replica(t, r, "c:1", 10*time.Second),
	}
	// file stands for the shared pins file: read, hold a while, write.
	var mu sync.Mutex
	file := 0
	const changes = 24
	errs := make(chan error, changes)
	var wg sync.WaitGroup
	for i := range changes {
		wg.Go(func() {
			l, err := cs[i%len(cs)].LockPins(context.Background(), "docker.io")
			if err != nil {
				errs <- err
				return
			}
			defer l.Release()
			mu.Lock()
			n := file
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			file = n + 1
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("LockPins: %v", err)
	}
	if file != changes {
		t.Errorf("%d changes made under the lock, the file holds %d: changes were lost", changes, file)
	}
}

// A waiter gets the lock as soon as its holder releases it, not a TTL
// later; locks are per upstream.
func TestPinsLockIsExclusiveUntilReleased(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = 10 * time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	la, err := a.LockPins(context.Background(), "docker.io")
	if err != nil {
		t.Fatalf("LockPins: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if _, err := b.LockPins(ctx, "docker.io"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LockPins of a held lock = %v, want it to wait until its context ends", err)
	}
	cancel()
	if lo, err := b.LockPins(context.Background(), "ghcr.io"); err != nil {
		t.Errorf("LockPins of another upstream: %v", err)
	} else {
		lo.Release()
	}
	got := make(chan error, 1)
	go func() {
		lb, err := b.LockPins(context.Background(), "docker.io")
		if err == nil {
			lb.Release()
		}
		got <- err
	}()
	time.Sleep(200 * time.Millisecond) // b is waiting
	la.Release()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("LockPins after the holder released: %v", err)
		}
	case <-time.After(ttl / 2):
		t.Fatal("the waiter did not get the released lock within half a TTL")
	}
}

// A live holder keeps the lock past its TTL, and a waiter gives up after
// two TTLs saying so; a holder that dies (no Release, no renewals) frees
// it once its TTL runs out.
func TestPinsLockExpiresWhenItsHolderDies(t *testing.T) {
	r := ts.StartRedis(t)
	const ttl = time.Second
	a := replica(t, r, "a:1", ttl)
	b := replica(t, r, "b:1", ttl)
	if _, err := a.LockPins(context.Background(), "docker.io"); err != nil {
		t.Fatalf("LockPins: %v", err)
	}
	if _, err := b.LockPins(context.Background(), "docker.io"); !errors.Is(err, coord.ErrPinsBusy) {
		t.Fatalf("LockPins while a live replica holds it for 2 TTLs = %v, want ErrPinsBusy", err)
	}
	_ = a.Close() // a kill -9: the lease stays in Redis until it expires
	lb, err := b.LockPins(context.Background(), "docker.io")
	if err != nil {
		t.Fatalf("LockPins after the holder died: %v", err)
	}
	lb.Release()
}

// Without Redis the lock is refused at once: a pin change is never made
// without it.
func TestPinsLockFailsFastWithoutRedis(t *testing.T) {
	r := ts.StartRedis(t)
	changes := make(chan bool, 4)
	c := coord.New(coord.Options{Addr: r.Addr, Password: r.Password, Self: "a:1", TTL: 10 * time.Second,
		OnChange: func(up bool, _ error) { changes <- up }})
	t.Cleanup(func() { _ = c.Close() })
	if up := <-changes; !up {
		t.Fatal("first change is down, want up")
	}
	r.Stop(t)
	if up := <-changes; up {
		t.Fatal("change after Stop is up, want down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.LockPins(ctx, "docker.io"); !errors.Is(err, coord.ErrUnavailable) {
		t.Errorf("LockPins with Redis down = %v, want ErrUnavailable", err)
	}
}
