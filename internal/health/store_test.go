package health

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// store is a settable StoreCheck, as a cache reports its write failures.
type store struct {
	mu      sync.Mutex
	op      string
	since   time.Time
	failing bool
}

func (s *store) check() (string, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.op, s.since, s.failing
}

func (s *store) fail(op string, since time.Time) {
	s.mu.Lock()
	s.op, s.since, s.failing = op, since, true
	s.mu.Unlock()
}

func (s *store) heal() {
	s.mu.Lock()
	s.op, s.since, s.failing = "", time.Time{}, false
	s.mu.Unlock()
}

func TestStorageFailureDegrades(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	var changes []Transition
	m := New(Options{StaleFor: time.Minute, now: clock.now,
		OnChange: func(_ string, t Transition) { changes = append(changes, t) }})
	u := m.Track("docker.io")
	s := &store{}
	u.CheckStore(s.check)
	u.Observe(200, nil)
	if st := u.Status(); st.State != Reachable || st.Reason != "" {
		t.Fatalf("writable store: %+v", st)
	}

	// The cache noticed the failure a little before anyone looked: the
	// state counts from when the store started failing.
	clock.advance(10 * time.Second)
	failedAt := clock.now()
	s.fail("commit", failedAt)
	clock.advance(5 * time.Second)
	st := u.Status()
	want := "storage: commit failing since 2030-01-02T03:04:15Z"
	if st.State != Degraded || !st.Since.Equal(failedAt) || st.Reason != want {
		t.Fatalf("failing store: %s since %v reason %q; want degraded since %v reason %q", st.State, st.Since, st.Reason, failedAt, want)
	}
	if last := changes[len(changes)-1]; last.To != Degraded || last.From != Reachable || last.Reason != want {
		t.Errorf("OnChange got %+v", last)
	}

	// Degraded outranks what the remote does: answers, outages and stale
	// serves are still recorded but do not move the state.
	u.Observe(200, nil)
	u.record(false, "probe failed: timeout", "probe failed: timeout")
	u.Stale("timeout")
	s.fail("spool", failedAt) // the same run of failures, another operation
	if st := u.Status(); st.State != Degraded || !st.Since.Equal(failedAt) || !strings.Contains(st.Reason, "spool failing") {
		t.Fatalf("degraded with upstream evidence: %+v", st)
	}
	n := len(changes)

	// Writable again: back to what the evidence says (a tag was just
	// served stale), from the moment that is known.
	clock.advance(time.Second)
	s.heal()
	st = u.Status()
	if st.State != Stale || !st.Since.Equal(clock.now()) || st.Reason != "" {
		t.Fatalf("after recovery: %+v", st)
	}
	if len(changes) != n+1 || changes[n].From != Degraded || changes[n].Reason != "storage writable again" {
		t.Errorf("recovery transitions: %+v", changes[n:])
	}
	// The stale window then ends as usual.
	clock.advance(2 * time.Minute)
	if st := u.Status(); st.State != Down {
		t.Errorf("after the stale window: %s, want down (the last probe failed)", st.State)
	}
}

// A failure that started before the current state began (say the cache
// failed while nobody looked, then a probe moved the state) does not put
// history out of order.
func TestStorageFailureKeepsHistoryInOrder(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	m := New(Options{now: clock.now})
	u := m.Track("docker.io")
	s := &store{}
	early := clock.now()
	clock.advance(time.Minute)
	u.Observe(200, nil) // reachable since now
	reachableAt := clock.now()
	s.fail("manifest", early)
	u.CheckStore(s.check)
	st := u.Status()
	if st.State != Degraded || !st.Since.Equal(reachableAt) {
		t.Fatalf("%s since %v, want degraded since %v", st.State, st.Since, reachableAt)
	}
	for i := 1; i < len(st.History); i++ {
		if st.History[i].At.Before(st.History[i-1].At) {
			t.Errorf("history out of order: %+v", st.History)
		}
	}
	// The reason still says when the failures began.
	if !strings.Contains(st.Reason, early.Format(time.RFC3339)) {
		t.Errorf("reason %q does not say the failures began at %v", st.Reason, early)
	}
}

// The probe loop polls the store, so the state (and the metric fed by
// OnChange) follows a failure without anyone reading Status.
func TestProbeLoopPollsTheStore(t *testing.T) {
	changed := make(chan Transition, 16)
	m := New(Options{Interval: 20 * time.Millisecond,
		OnChange: func(_ string, t Transition) { changed <- t }})
	u := m.Track("docker.io")
	p := &pinger{}
	u.Probe(p)
	s := &store{}
	u.CheckStore(s.check)
	m.Start()
	defer m.Stop()
	wait := func(want State) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case tr := <-changed:
				if tr.To == want {
					return
				}
			case <-timeout:
				t.Fatalf("no transition to %s", want)
			}
		}
	}
	wait(Reachable)
	s.fail("commit", time.Now())
	wait(Degraded)
	s.heal()
	wait(Reachable)
}

func TestNoStoreCheckNeverDegrades(t *testing.T) {
	m := New(Options{})
	u := m.Track("docker.io")
	u.Observe(200, nil)
	s := &store{}
	u.CheckStore(s.check)
	s.fail("commit", time.Now())
	if st := u.Status(); st.State != Degraded {
		t.Fatalf("%s, want degraded", st.State)
	}
	u.CheckStore(nil) // no longer checked: the last evidence stands
	if st := u.Status(); st.State != Reachable {
		t.Fatalf("%s after the check was removed, want reachable", st.State)
	}
}
