package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// fakeClock is a settable clock for stale-window tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// pinger answers with whatever err holds and counts calls.
type pinger struct {
	err   atomic.Pointer[error]
	calls atomic.Int64
}

func (p *pinger) Ping(context.Context) error {
	p.calls.Add(1)
	if e := p.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (p *pinger) fail(err error) { p.err.Store(&err) }
func (p *pinger) heal()          { p.err.Store(nil) }

func waitState(t *testing.T, u *Upstream, want State, within time.Duration) Status {
	t.Helper()
	var st Status
	waitFor(t, within, func() bool {
		st = u.Status()
		return st.State == want
	}, func() string { return fmt.Sprintf("state %s, want %s (history %+v)", st.State, want, st.History) })
	return st
}

// probedUpstream starts a Monitor probing one upstream with a pinger
// that answers until told to fail. The upstream has answered once, as the
// proxy's startup ping does before Start. The Monitor stops with the test.
func probedUpstream(t *testing.T, name string, interval time.Duration) (*Upstream, *pinger) {
	t.Helper()
	m := New(Options{Interval: interval})
	u := m.Track(name)
	p := &pinger{}
	u.Probe(p)
	u.Observe(200, nil)
	m.Start()
	t.Cleanup(m.Stop)
	return u, p
}

// observeFor reports the same request outcome to u every period until d
// has passed, as steady traffic would.
func observeFor(u *Upstream, d, every time.Duration, status int, err error) {
	stop := time.After(d)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			u.Observe(status, err)
		}
	}
}

func TestProbesFollowTheUpstream(t *testing.T) {
	const interval = 50 * time.Millisecond
	var changes []Transition
	var mu sync.Mutex
	m := New(Options{Interval: interval, OnChange: func(_ string, tr Transition) {
		mu.Lock()
		changes = append(changes, tr)
		mu.Unlock()
	}})
	u := m.Track("docker.io")
	if st := u.Status(); st.State != Unknown {
		t.Fatalf("before any evidence: %s, want unknown", st.State)
	}
	p := &pinger{}
	u.Probe(p)
	m.Start()
	defer m.Stop()

	waitState(t, u, Reachable, time.Second)
	p.fail(errors.New("connection refused"))
	before := time.Now()
	st := waitState(t, u, Down, 5*interval)
	if st.Since.Before(before) {
		t.Errorf("since %v is before the upstream failed (%v)", st.Since, before)
	}
	if st.LastError == "" {
		t.Error("down without a last error")
	}
	p.heal()
	st = waitState(t, u, Reachable, 5*interval)
	if st.LastError == "" {
		t.Error("the last outage's error was forgotten on recovery")
	}

	mu.Lock()
	defer mu.Unlock()
	var path []State
	for _, c := range changes {
		path = append(path, c.To)
	}
	if want := []State{Reachable, Down, Reachable}; fmt.Sprint(path) != fmt.Sprint(want) {
		t.Errorf("transitions %v, want %v", path, want)
	}
}

func TestTrafficStandsInForProbes(t *testing.T) {
	const interval = 40 * time.Millisecond
	u, p := probedUpstream(t, "ghcr.io", interval)

	observeFor(u, 10*interval, interval/4, 401, nil) // a token challenge is an answer too
	if n := p.calls.Load(); n > 1 {
		t.Errorf("%d probes while traffic kept reporting, want at most 1", n)
	}
	if st := u.Status(); st.State != Reachable {
		t.Errorf("state %s, want reachable", st.State)
	}

	// Traffic stops: probes resume.
	waitFor(t, 5*time.Second, func() bool { return p.calls.Load() >= 2 },
		func() string {
			return fmt.Sprintf("%d probes after traffic stopped, want probing to resume", p.calls.Load())
		})
}

func TestTrafficEvidence(t *testing.T) {
	m := New(Options{})
	u := m.Track("quay.io")
	u.Observe(0, context.Canceled)
	u.Observe(0, errors.New("tls: first record does not look like a TLS handshake"))
	u.Observe(503, nil)
	if st := u.Status(); st.State != Unknown {
		t.Errorf("failures nobody confirmed moved the state to %s", st.State)
	}
	u.Observe(429, nil)
	if st := u.Status(); st.State != Reachable {
		t.Errorf("after a 429: %s, want reachable (it answered)", st.State)
	}
}

func TestTrafficFailureIsConfirmedByAProbeAtOnce(t *testing.T) {
	const interval = time.Hour // only a kick can probe within the test
	u, p := probedUpstream(t, "docker.io", interval)

	// A failure on a healthy upstream: the probe finds it well.
	u.Observe(0, errors.New("tls: first record does not look like a TLS handshake"))
	waitFor(t, 5*time.Second, func() bool { return p.calls.Load() == 1 },
		func() string { return fmt.Sprintf("%d probes", p.calls.Load()) })
	if st := u.Status(); st.State != Reachable {
		t.Fatalf("a one-off failure made the upstream %s", st.State)
	}

	// A failure on an upstream that is gone: the probe it kicks, not a
	// tick an hour away, shows it down.
	g, gp := probedUpstream(t, "ghcr.io", interval)
	gp.fail(errors.New("connection refused"))
	g.Observe(0, errors.New("connection refused"))
	waitState(t, g, Down, 5*time.Second)
}

func TestOutageUnderTrafficIsProbedButNotHammered(t *testing.T) {
	const interval = 200 * time.Millisecond
	u, p := probedUpstream(t, "docker.io", interval)

	p.fail(errors.New("connection refused"))
	u.Observe(0, errors.New("connection refused"))
	waitState(t, u, Down, 5*time.Second)
	// Requests keep failing: probes stay at most one per quarter interval,
	// and the probes' own failures do not feed more probes.
	p.calls.Store(0)
	observeFor(u, 5*interval, time.Millisecond, 0, errors.New("connection refused"))
	// Up to 4 kicked probes and 1 tick per interval; a loop would be
	// thousands.
	if n := p.calls.Load(); n > 5*5+2 || n < 5 {
		t.Errorf("%d probes in 5 intervals of failing traffic, want between 5 and 27", n)
	}
	p.calls.Store(0)
	time.Sleep(5 * interval)
	if n := p.calls.Load(); n > 5+2 {
		t.Errorf("%d probes in 5 quiet intervals of an outage, want about 5", n)
	}
}

// waitFor polls cond until it holds, failing with saw() after within: a
// bound for a hang, never a pace. (testsupport.WaitFor cannot be used
// here: testsupport imports this package.)
func waitFor(t *testing.T, within time.Duration, cond func() bool, saw func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, saw())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStaleWindow(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	const window = time.Minute
	m := New(Options{StaleFor: window, now: clock.now})
	u := m.Track("docker.io")
	u.Observe(200, nil)

	clock.advance(time.Second)
	u.Stale("timeout")
	staleAt := clock.now()
	st := u.Status()
	if st.State != Stale || !st.Since.Equal(staleAt) {
		t.Fatalf("after a stale serve: %s since %v, want stale since %v", st.State, st.Since, staleAt)
	}

	// More stale serves and failures inside the window keep it stale, and
	// since stays at the start of the episode.
	clock.advance(30 * time.Second)
	u.record(false, "probe failed: timeout", "probe failed: timeout")
	u.Stale("timeout")
	lastStale := clock.now()
	if st := u.Status(); st.State != Stale || !st.Since.Equal(staleAt) {
		t.Fatalf("inside the window: %s since %v, want stale since %v", st.State, st.Since, staleAt)
	}

	// The window ends while the upstream is still failing: down, since the
	// window's end rather than since whoever looked.
	clock.advance(window + 10*time.Second)
	st = u.Status()
	if want := lastStale.Add(window); st.State != Down || !st.Since.Equal(want) {
		t.Fatalf("after the window: %s since %v, want down since %v", st.State, st.Since, want)
	}
	clock.advance(time.Second)
	u.Observe(200, nil)
	if st := u.Status(); st.State != Reachable || !st.Since.Equal(clock.now()) {
		t.Fatalf("after recovery: %s since %v", st.State, st.Since)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	m := New(Options{})
	u := m.Track("docker.io")
	for i := range 3 * historyLen {
		u.record(i%2 == 0, "flapping", "flapping") // reachable, down, reachable, ...
	}
	st := u.Status()
	if len(st.History) != historyLen {
		t.Fatalf("history holds %d transitions, want the last %d", len(st.History), historyLen)
	}
	if last := st.History[len(st.History)-1]; last.To != st.State {
		t.Errorf("last transition to %s, current state %s", last.To, st.State)
	}
}

func TestStopEndsProbesInFlight(t *testing.T) {
	m := New(Options{Interval: time.Hour})
	u := m.Track("slow")
	blocked := make(chan struct{})
	u.Probe(pingFunc(func(ctx context.Context) error {
		close(blocked)
		<-ctx.Done()
		return ctx.Err()
	}))
	m.Start()
	<-blocked
	done := make(chan struct{})
	go func() { m.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not end a probe in flight")
	}
	if st := u.Status(); st.State != Unknown {
		t.Errorf("a probe cancelled by Stop was taken as evidence: %s", st.State)
	}
}

type pingFunc func(context.Context) error

func (f pingFunc) Ping(ctx context.Context) error { return f(ctx) }

// What /readyz shows of a failed probe names the cause, never the error
// chain with its addresses: that is the log's.
func TestPublicReasonHasNoInternals(t *testing.T) {
	err := &upstream.Error{Op: "ping", Cause: upstream.CauseUnreachable,
		Err: errors.New("dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host")}
	if got := publicReason(err); got != "probe failed: unreachable" {
		t.Errorf("publicReason = %q", got)
	}
	err = &upstream.Error{Op: "ping", Cause: upstream.CauseServerError, Status: 503, Err: errors.New("<html>backend 10.1.2.3 down</html>")}
	if got := publicReason(err); got != "probe failed: server_error (503)" {
		t.Errorf("publicReason = %q", got)
	}
}

// An upstream that stays down for many probes is logged once when it goes
// down and once when it is back: not a warning per probe.
func TestOutageIsLoggedOnceEachWay(t *testing.T) {
	const interval = 20 * time.Millisecond
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	m := New(Options{Interval: interval, Logger: log})
	u := m.Track("docker.io")
	p := &pinger{}
	p.fail(errors.New("connection refused"))
	u.Probe(p)
	m.Start()
	defer m.Stop()
	waitState(t, u, Down, time.Second)
	time.Sleep(20 * interval) // many more failed probes
	p.heal()
	waitState(t, u, Reachable, time.Second)
	time.Sleep(5 * interval)
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if n := strings.Count(out, `msg="upstream down"`); n != 1 {
		t.Errorf("%d \"upstream down\" lines for one outage, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, `msg="upstream reachable"`); n != 1 {
		t.Errorf("%d \"upstream reachable\" lines after one recovery, want 1:\n%s", n, out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
