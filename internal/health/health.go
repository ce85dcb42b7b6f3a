// Package health tracks, per upstream, whether the remote registry answers,
// so that /readyz, /api/v1/status and the status page can say "reachable",
// "stale" or "down", and since when.
//
// Two kinds of evidence feed it. Probes: a GET of the remote's /v2/
// (upstream.Client.Ping) every interval. Traffic: every request the upstream
// client sends is reported through Observe, and every tag served stale
// through Stale. An answer from traffic counts at once and stands in for
// the next probe, so a busy upstream costs no extra requests. A failure
// from traffic only triggers a probe to confirm it: one failed request does
// not make a registry down (one broken blob or one refused redirect hop is
// not an outage), but the outage it may announce then shows within moments
// rather than at the next tick.
//
// The state is derived from that evidence:
//
//   - stale: a tag was served stale within the last StaleFor. The upstream is
//     failing (down, rate limiting, erroring) but the cache answers for it,
//     so pulls of cached tags work and may be out of date.
//   - down: the last evidence is a failure and nothing was served stale
//     recently: only content pinned by digest in the cache can be pulled.
//   - reachable: the last evidence is an answer.
//   - unknown: no evidence yet; only seen before the first probe returns.
//
// One state is about the upstream's local store rather than its remote:
//
//   - degraded: the store cannot be written (a read-only or failing
//     filesystem, a storage directory replaced by a file). Pulls of what is
//     cached may still work and fills are passed through unstored, but the node
//     needs an operator, so /readyz answers 503. It outranks every other
//     state while it lasts. The store is not probed here: the cache
//     reports its own write failures, and CheckStore hands the Monitor a
//     function to read them, polled whenever the state is read and at
//     every probe interval.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// State is an upstream's health as clients experience it.
type State string

// States of an upstream.
const (
	Unknown   State = "unknown"
	Reachable State = "reachable"
	Stale     State = "stale"
	Down      State = "down"
	Degraded  State = "degraded"
)

// States lists every State, for metrics that want a series per state.
var States = []State{Unknown, Reachable, Stale, Down, Degraded}

// Defaults for Options left zero.
const (
	DefaultInterval = 10 * time.Second
	DefaultStaleFor = 2 * time.Minute
)

// historyLen bounds the transitions kept per upstream: enough to see a
// flapping upstream on the status API, never a growing list.
const historyLen = 16

// Pinger asks an upstream whether it is there; *upstream.Client is one.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Transition is one change of state.
type Transition struct {
	From   State     `json:"from"`
	To     State     `json:"to"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// Options configures a Monitor.
type Options struct {
	// Interval between probes of an upstream that traffic has not reported
	// on; default DefaultInterval.
	Interval time.Duration
	// StaleFor is how long one stale serve keeps an upstream "stale";
	// default DefaultStaleFor.
	StaleFor time.Duration
	Logger   *slog.Logger
	// OnChange, if set, is called on every transition, in order per
	// upstream. It must not call back into the Monitor.
	OnChange func(upstream string, t Transition)
	// now is the clock; tests replace it.
	now func() time.Time
}

// Monitor holds the state of every tracked upstream and probes them.
type Monitor struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	ups     []*Upstream
	started bool
	ctx     context.Context // probes' parent once started
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New returns a Monitor with no upstreams; add them with Track, then Start.
func New(o Options) *Monitor {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.StaleFor <= 0 {
		o.StaleFor = DefaultStaleFor
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	return &Monitor{o: o, log: o.Logger}
}

// Track starts tracking an upstream. It takes evidence at once, before it
// has a Pinger, so the proxy's own startup ping counts when it is answered;
// when it is not, the probe Start makes at once confirms the failure.
func (m *Monitor) Track(name string) *Upstream {
	u := &Upstream{m: m, name: name, state: Unknown, since: m.o.now(), kick: make(chan struct{}, 1)}
	m.mu.Lock()
	m.ups = append(m.ups, u)
	m.mu.Unlock()
	return u
}

// Start probes every upstream that has a Pinger, each in its own goroutine
// so that one black-holed upstream does not delay the others' probes.
func (m *Monitor) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return
	}
	m.started = true
	m.ctx, m.cancel = context.WithCancel(context.Background())
	for _, u := range m.ups {
		m.runLocked(u)
	}
}

// runLocked starts probing u if it has a Pinger. Callers hold m.mu and the
// Monitor is started.
func (m *Monitor) runLocked(u *Upstream) {
	p := u.getPinger()
	if p == nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	u.mu.Lock()
	u.stop = cancel
	u.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		u.run(ctx, p)
	}()
}

// Add tracks an upstream added after Start (a config reload) and starts
// probing it with p at once.
func (m *Monitor) Add(name string, p Pinger) *Upstream {
	u := m.Track(name)
	u.Probe(p)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started && m.ctx != nil && m.ctx.Err() == nil {
		m.runLocked(u)
	}
	return u
}

// Remove stops tracking and probing u (an upstream a reload removed).
func (m *Monitor) Remove(u *Upstream) {
	m.mu.Lock()
	for i, x := range m.ups {
		if x == u {
			m.ups = append(m.ups[:i:i], m.ups[i+1:]...)
			break
		}
	}
	m.mu.Unlock()
	u.mu.Lock()
	stop := u.stop
	u.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Stop ends probing and waits for probes in flight; a stopped Monitor still
// answers Status.
func (m *Monitor) Stop() {
	m.mu.Lock()
	cancel := m.cancel
	m.cancel = nil
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
}

// Status is one upstream's state now.
type Status struct {
	Name  string    `json:"name"`
	State State     `json:"state"`
	Since time.Time `json:"since"`
	// LastError is the latest failure seen, kept after a recovery so an
	// operator can see what the last outage was.
	LastError string `json:"last_error,omitempty"`
	// LastStale is when a tag was last served stale; zero if never.
	LastStale time.Time `json:"last_stale,omitzero"`
	// Reason says why the upstream is degraded, e.g. "storage: commit
	// failing since 2025-01-02T03:04:05Z"; empty in any other state. It
	// never carries a path or an error's text: those are for the log.
	Reason  string       `json:"reason,omitempty"`
	History []Transition `json:"history"`
}

// StoreCheck reports whether an upstream's store can be written: failing
// with the operation that failed last and since when it has been failing.
// cache.Cache's StorageProblem is one, less its error. It must be cheap and
// must not call into the Monitor.
type StoreCheck func() (op string, since time.Time, failing bool)

// Upstream is the tracked state of one upstream. Its methods are safe for
// concurrent use.
type Upstream struct {
	m    *Monitor
	name string

	// kick asks for a probe now, to confirm a failure traffic met.
	kick chan struct{}

	mu           sync.Mutex
	pinger       Pinger
	store        StoreCheck
	storeOp      string             // the failing store operation, "" while writable
	storeSince   time.Time          // since when it fails
	stop         context.CancelFunc // ends this upstream's probes
	known        bool               // any evidence yet
	ok           bool               // the latest evidence was an answer
	lastErr      string
	lastEvidence time.Time
	lastProbe    time.Time // when the latest probe returned
	probing      bool
	lastStale    time.Time
	state        State
	since        time.Time
	history      []Transition
}

// Probe sets what the Monitor probes this upstream with; call it before Start.
func (u *Upstream) Probe(p Pinger) {
	u.mu.Lock()
	u.pinger = p
	u.mu.Unlock()
}

// CheckStore sets how the upstream's store is checked (see StoreCheck); nil
// stops checking it. The check is first read at the next Status or probe
// tick, not here, so a caller may hold locks the check takes.
func (u *Upstream) CheckStore(f StoreCheck) {
	u.mu.Lock()
	u.store = f
	u.mu.Unlock()
}

// pollStore reads the store check and moves into or out of degraded. The
// check runs outside u.mu, so it may take locks of its own.
func (u *Upstream) pollStore() {
	u.mu.Lock()
	f := u.store
	u.mu.Unlock()
	var (
		op      string
		since   time.Time
		failing bool
	)
	if f != nil {
		op, since, failing = f()
	}
	now := u.m.o.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.settleLocked(now)
	u.storeLocked(now, op, since, failing)
}

// storeLocked records the store's condition. A new failure counts from when
// it began (not before the current state's own start, so history stays in
// order); a recovery counts from now, the first moment it is known.
func (u *Upstream) storeLocked(now time.Time, op string, since time.Time, failing bool) {
	if !failing {
		if u.storeOp == "" {
			return
		}
		u.storeOp, u.storeSince = "", time.Time{}
		u.transitionLocked(now, "storage writable again")
		return
	}
	if op == "" {
		op = "write"
	}
	if since.IsZero() || since.After(now) {
		since = now
	}
	if u.storeOp != "" && u.storeSince.Equal(since) {
		u.storeOp = op // the same run of failures; only the operation moved
		return
	}
	u.storeOp, u.storeSince = op, since
	at := since
	if at.Before(u.since) {
		at = u.since
	}
	u.transitionLocked(at, u.storeReasonLocked())
}

func (u *Upstream) storeReasonLocked() string {
	what := "storage: " + u.storeOp
	if u.storeOp == OpCoordination {
		what = "coordination"
	}
	return fmt.Sprintf("%s failing since %s", what, u.storeSince.UTC().Format(time.RFC3339))
}

// OpCoordination is the StoreCheck operation of replicas that cannot reach
// Redis: they serve and fill alone, so the cluster fetches blobs more than
// once, which is degraded service, not an outage.
const OpCoordination = "coordination"

func (u *Upstream) getPinger() Pinger {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pinger
}

// Observe takes the outcome of one request the upstream client sent:
// status is the HTTP status, or 0 with err when no answer came. Any answer
// below 500, 401 and 429 included, shows a registry that is there; anything
// else has a probe confirm it (see the package comment).
func (u *Upstream) Observe(status int, err error) {
	switch {
	case err != nil && errors.Is(err, context.Canceled):
		// The client went away (or we are shutting down): that says
		// nothing about the upstream.
	case err != nil || status >= http.StatusInternalServerError:
		u.mu.Lock()
		probing := u.probing
		u.mu.Unlock()
		if probing {
			// Most likely the probe's own request; either way the probe
			// is about to say.
			return
		}
		select {
		case u.kick <- struct{}{}:
		default: // a probe is already asked for
		}
	default:
		u.record(true, "upstream answered", "")
	}
}

// BadContent takes an upstream answer that was not valid for its endpoint,
// of the given kind (manifest, blob, tag, referrers). It is the upstream's
// latest failure, shown as such; but the registry answered, and one bad
// answer is not an outage, so the state stays what the rest of the
// evidence says. It never touches the store's condition: /readyz must not
// take a replica out of its load balancer for what an upstream sent.
func (u *Upstream) BadContent(kind string) {
	now := u.m.o.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.settleLocked(now)
	u.lastErr = "bad content: " + kind
}

// Stale takes a tag served from the cache because the upstream could not
// revalidate it, for the given cause.
func (u *Upstream) Stale(cause string) {
	now := u.m.o.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.settleLocked(now)
	u.lastStale = now
	u.transitionLocked(now, "served stale: "+cause)
}

// Status reports the state now, reading the store check first.
func (u *Upstream) Status() Status {
	u.pollStore()
	now := u.m.o.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.settleLocked(now)
	st := Status{
		Name:      u.name,
		State:     u.state,
		Since:     u.since,
		LastError: u.lastErr,
		LastStale: u.lastStale,
		History:   append([]Transition(nil), u.history...),
	}
	if u.state == Degraded {
		st.Reason = u.storeReasonLocked()
	}
	return st
}

// record takes a piece of evidence. reason goes to the log with the whole
// story; public, what /readyz and the status page show, names the failure
// without addresses or error chains.
func (u *Upstream) record(ok bool, reason, public string) {
	now := u.m.o.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.settleLocked(now)
	u.known, u.ok, u.lastEvidence = true, ok, now
	if !ok {
		u.lastErr = public
	}
	u.transitionLocked(now, reason)
}

// publicReason says why a probe failed in the terms of internal/upstream's
// causes: "probe failed: unreachable", "probe failed: 503".
func publicReason(err error) string {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		if ue.Status != 0 {
			return fmt.Sprintf("probe failed: %s (%d)", ue.Cause, ue.Status)
		}
		return "probe failed: " + string(ue.Cause)
	}
	return "probe failed: " + string(upstream.CauseOf(err))
}

// derive is the state the evidence gives at t.
func (u *Upstream) deriveLocked(t time.Time) State {
	switch {
	case u.storeOp != "":
		return Degraded
	case !u.lastStale.IsZero() && t.Sub(u.lastStale) < u.m.o.StaleFor:
		return Stale
	case !u.known:
		return Unknown
	case u.ok:
		return Reachable
	default:
		return Down
	}
}

// settleLocked records a stale window that ran out before now at the
// moment it ran out, not at the moment someone next looked: "since" must be
// when the upstream stopped being stale.
func (u *Upstream) settleLocked(now time.Time) {
	if u.state != Stale {
		return
	}
	end := u.lastStale.Add(u.m.o.StaleFor)
	if now.Before(end) {
		return
	}
	u.transitionLocked(end, fmt.Sprintf("nothing served stale for %s", u.m.o.StaleFor))
}

func (u *Upstream) transitionLocked(at time.Time, reason string) {
	to := u.deriveLocked(at)
	if to == u.state {
		return
	}
	t := Transition{From: u.state, To: to, At: at, Reason: reason}
	u.state, u.since = to, at
	if len(u.history) == historyLen {
		copy(u.history, u.history[1:])
		u.history = u.history[:historyLen-1]
	}
	u.history = append(u.history, t)
	level := slog.LevelInfo
	switch to {
	case Down, Stale:
		level = slog.LevelWarn
	case Degraded:
		level = slog.LevelError
	}
	u.m.log.Log(context.Background(), level, "upstream "+string(to), "upstream", u.name, "from", t.From, "reason", reason)
	if u.m.o.OnChange != nil {
		u.m.o.OnChange(u.name, t)
	}
}

// run probes every interval unless traffic answered since the last probe,
// and when traffic met a failure, though never more often than every quarter
// interval so that a failing upstream under load is not pinged in a loop.
// An upstream nobody has heard from yet is probed at once.
func (u *Upstream) run(ctx context.Context, p Pinger) {
	u.mu.Lock()
	known := u.known
	u.mu.Unlock()
	if !known {
		u.probe(ctx, p)
	}
	gap := u.m.o.Interval / 4
	t := time.NewTicker(u.m.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			u.pollStore()
			now := u.m.o.now()
			u.mu.Lock()
			u.settleLocked(now)
			// A probe's own request also reaches Observe, but before
			// lastProbe is set, so it never counts as traffic here.
			heard := u.lastEvidence.After(u.lastProbe) && now.Sub(u.lastEvidence) < u.m.o.Interval
			u.mu.Unlock()
			if heard {
				continue
			}
		case <-u.kick:
			u.mu.Lock()
			wait := gap - u.m.o.now().Sub(u.lastProbe)
			u.mu.Unlock()
			if wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
		u.probe(ctx, p)
	}
}

func (u *Upstream) probe(ctx context.Context, p Pinger) {
	u.mu.Lock()
	u.probing = true
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.probing = false
		u.lastProbe = u.m.o.now()
		u.mu.Unlock()
		// A failure met while this probe ran is answered by it.
		select {
		case <-u.kick:
		default:
		}
	}()
	err := p.Ping(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		u.record(false, "probe failed: "+err.Error(), publicReason(err))
	} else {
		u.record(true, "probe answered", "")
	}
}
