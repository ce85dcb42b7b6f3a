package serve

// The status side of a Process: /readyz, /api/v1/status and the status page
// read what the board gathers here, and the admin API's recycle and gc land
// here. serve.go only hands each upstream's observer, listener and client to
// the board, and starts and stops it.

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/health"
	"github.com/multiproxy/multiproxy/internal/metrics"
)

// Timings of the status board. They are variables so tests can shorten
// them; change them only before Start.
var (
	// ProbeInterval is how often an upstream is probed when no traffic has
	// been answered since the last probe; a failed request has it probed
	// sooner (see internal/health).
	ProbeInterval = health.DefaultInterval
	// StaleWindow is how long one stale serve keeps an upstream "stale".
	StaleWindow = health.DefaultStaleFor
	// StoredBytesMaxAge is the most often an upstream's storage is walked to
	// measure it; a walk of a large store is real disk work.
	StoredBytesMaxAge = 30 * time.Second
)

// board is what the status surface knows per upstream beyond the metrics.
type board struct {
	log    *slog.Logger
	health *health.Monitor
	// ups is filled by newBoard and Start, and changed by config reloads.
	mu  sync.RWMutex
	ups map[string]*boardUpstream

	ctx    context.Context // cancelled by stop; ends storage walks
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type boardUpstream struct {
	health   *health.Upstream
	listener *servingListener
	size     *sizer
}

func newBoard(p *Process) *board {
	ctx, cancel := context.WithCancel(context.Background())
	b := &board{log: p.log, ups: map[string]*boardUpstream{}, ctx: ctx, cancel: cancel}
	b.health = health.New(health.Options{
		Interval: ProbeInterval,
		StaleFor: StaleWindow,
		Logger:   p.log,
		OnChange: func(name string, t health.Transition) { p.metrics.For(name).State(t.To) },
	})
	for _, u := range p.cfg.Upstreams {
		b.ups[u.Name] = b.newUpstream(p.metrics.For(u.Name), u.Storage, b.health.Track(u.Name))
	}
	return b
}

func (b *board) newUpstream(m *metrics.Upstream, storage string, h *health.Upstream) *boardUpstream {
	bu := &boardUpstream{
		health: h,
		size:   &sizer{dir: storage, maxAge: StoredBytesMaxAge, b: b},
	}
	m.State(health.Unknown) // until the first evidence, so the series exists from the start
	m.StoredBytesFunc(func() (int64, bool) {
		n, _, ok := bu.size.get()
		return n, ok
	})
	return bu
}

// add tracks an upstream a reload added, probing it at once.
func (b *board) add(name, storage string, m *metrics.Upstream, p health.Pinger) {
	bu := b.newUpstream(m, storage, b.health.Add(name, p))
	b.mu.Lock()
	b.ups[name] = bu
	b.mu.Unlock()
}

// remove stops tracking an upstream a reload removed.
func (b *board) remove(name string) {
	b.mu.Lock()
	bu := b.ups[name]
	delete(b.ups, name)
	b.mu.Unlock()
	if bu != nil {
		b.health.Remove(bu.health)
	}
}

// reprobe gives an upstream a fresh tracker probing with p (a reload changed
// its remote or credentials); its listener and size stay.
func (b *board) reprobe(name string, p health.Pinger) {
	b.mu.Lock()
	bu := b.ups[name]
	b.mu.Unlock()
	if bu == nil {
		return
	}
	old := bu.health
	nh := b.health.Add(name, p)
	b.mu.Lock()
	bu.health = nh
	b.mu.Unlock()
	b.health.Remove(old)
}

// get is an upstream's entry.
func (b *board) get(name string) *boardUpstream {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.ups[name]
}

// observer tees what an upstream's proxy reports: everything to metrics,
// and the upstream's answers and stale serves to health as evidence.
func (b *board) observer(name string, m *metrics.Upstream) *observer {
	return &observer{m: m, b: b, name: name}
}

// listener wraps an upstream's listener so readiness can tell whether it is
// still open.
func (b *board) listener(name string, l net.Listener) net.Listener {
	sl := &servingListener{Listener: l}
	b.get(name).listener = sl
	return sl
}

// probe sets the client an upstream's health is probed with.
func (b *board) probe(name string, p health.Pinger) { b.get(name).health.Probe(p) }

// start begins probing and the first storage walks, so the first look at
// the status page already has sizes.
func (b *board) start() {
	b.health.Start()
	for _, u := range b.ups {
		u.size.get()
	}
}

// stop ends probes and walks and waits for them: the upstream clients they
// use are closed next.
func (b *board) stop() {
	b.health.Stop()
	b.cancel()
	b.wg.Wait()
}

// observer implements proxy.Observer.
type observer struct {
	m    *metrics.Upstream
	b    *board
	name string
}

// h is looked up on each use: a reload may give the upstream a new tracker.
func (o *observer) h() *health.Upstream {
	if bu := o.b.get(o.name); bu != nil {
		return bu.health
	}
	return nil
}

func (o *observer) Hit(kind string)       { o.m.Hit(kind) }
func (o *observer) Miss(kind string)      { o.m.Miss(kind) }
func (o *observer) DedupJoin(kind string) { o.m.DedupJoin(kind) }
func (o *observer) UpstreamBytes(n int64) { o.m.UpstreamBytes(n) }
func (o *observer) UpstreamRedirect()     { o.m.UpstreamRedirect() }
func (o *observer) Request(kind string, status int, d time.Duration, fromCache bool, bytes int64) {
	o.m.Request(kind, status, d, fromCache, bytes)
}

func (o *observer) Stale(cause string) {
	o.m.Stale(cause)
	if h := o.h(); h != nil {
		h.Stale(cause)
	}
}

func (o *observer) Upstream(method string, status int, d time.Duration, h http.Header, err error) {
	o.m.Upstream(method, status, d, h, err)
	if hu := o.h(); hu != nil {
		hu.Observe(status, err)
	}
}

// servingListener notes when it is closed: by Shutdown, or by http.Server
// when Serve fails on its own.
type servingListener struct {
	net.Listener
	closed atomic.Bool
}

func (l *servingListener) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

func (l *servingListener) serving() bool { return l != nil && !l.closed.Load() }

// sizer caches the size of an upstream's storage directory. A stale value
// is returned at once while a fresh walk runs in the background, so neither
// a scrape nor the status page ever waits on the disk.
type sizer struct {
	dir    string
	maxAge time.Duration
	b      *board

	mu      sync.Mutex
	n       int64
	at      time.Time
	ok      bool
	walking bool
}

func (s *sizer) get() (n int64, at time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.walking && (!s.ok || time.Since(s.at) >= s.maxAge) && s.b.ctx.Err() == nil {
		s.walking = true
		s.b.wg.Go(s.walk)
	}
	return s.n, s.at, s.ok
}

func (s *sizer) walk() {
	start := time.Now()
	n, err := dirSize(s.b.ctx, s.dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.walking = false
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			s.b.log.Warn("measure storage", "dir", s.dir, "err", err)
		}
		return
	}
	s.n, s.at, s.ok = n, start, true
}

// dirSize adds up the regular files under dir. Files that vanish during the
// walk (a GC, a failed fill cleaning up) are simply not counted; a missing
// dir is an upstream that has stored nothing yet.
func dirSize(ctx context.Context, dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// readyUpstream is one upstream in the /readyz body.
type readyUpstream struct {
	Name      string       `json:"name"`
	Listen    string       `json:"listen"`
	Serving   bool         `json:"serving"`
	State     health.State `json:"state"`
	Since     time.Time    `json:"since"`
	LastError string       `json:"last_error,omitempty"`
}

// Ready implements admin.Backend: ready while every upstream listener is
// open. An unreachable upstream does not make the process unready, since the
// cache still serves what it holds; its state is in the body for the
// operator.
func (p *Process) Ready() (bool, any) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	ready := !closed
	ups, _ := p.snapshot()
	out := make([]readyUpstream, 0, len(ups))
	for _, r := range ups {
		bu := p.board.get(r.name)
		hs := bu.health.Status()
		serving := !closed && bu.listener.serving()
		ready = ready && serving
		out = append(out, readyUpstream{
			Name: r.name, Listen: r.addr, Serving: serving,
			State: hs.State, Since: hs.Since.UTC(), LastError: hs.LastError,
		})
	}
	return ready, map[string]any{"ready": ready, "upstreams": out}
}

// Status implements admin.Backend.
func (p *Process) Status(context.Context) (admin.Status, error) {
	ready, _ := p.Ready()
	ups, _ := p.snapshot()
	st := admin.Status{Time: time.Now().UTC(), Ready: ready, Upstreams: make([]admin.UpstreamStatus, 0, len(ups))}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	for _, r := range ups {
		cfg := r.cfg
		bu := p.board.get(r.name)
		hs := bu.health.Status()
		sum := p.metrics.Summary(r.name)
		us := admin.UpstreamStatus{
			Name:               r.name,
			Listen:             r.addr,
			Remote:             cfg.Remote,
			Serving:            !closed && bu.listener.serving(),
			State:              string(hs.State),
			Since:              hs.Since.UTC(),
			LastError:          hs.LastError,
			History:            make([]admin.Transition, 0, len(hs.History)),
			HitRatio:           sum.HitRatio(),
			CacheHits:          sum.Hits,
			CacheMisses:        sum.Misses,
			ServedBytes:        admin.ServedBytes{Cache: sum.ServedFromCache, Upstream: sum.ServedFromUpstream},
			FetchedBytes:       sum.FetchedBytes,
			StaleServes:        sum.StaleServes,
			RecycleFailures:    sum.RecycleFailures,
			RateLimited:        sum.RateLimited,
			RateLimitRemaining: sum.RateLimitRemaining,
		}
		if !hs.LastStale.IsZero() {
			t := hs.LastStale.UTC()
			us.LastStale = &t
		}
		for _, t := range hs.History {
			us.History = append(us.History, admin.Transition{From: string(t.From), To: string(t.To), At: t.At.UTC(), Reason: t.Reason})
		}
		if n, at, ok := bu.size.get(); ok {
			at = at.UTC()
			us.StoredBytes, us.StoredAt = &n, &at
		}
		if g := sum.LastGC; g != nil {
			us.LastGC = &admin.GCRun{At: g.At.UTC(), Result: g.Result, DurationSeconds: g.Duration.Seconds(),
				FreedBytes: g.FreedBytes, FreedObjects: g.FreedObjects}
		}
		if rc := sum.LastRecycle; rc != nil {
			us.LastRecycle = &admin.Recycle{At: rc.At.UTC(), Reason: rc.Reason}
		}
		st.Upstreams = append(st.Upstreams, us)
	}
	return st, nil
}

// Recycle implements admin.Backend.
func (p *Process) Recycle(ctx context.Context, upstream string) error {
	return p.recycleNow(ctx, upstream)
}

// GC implements admin.Backend.
func (p *Process) GC(ctx context.Context, upstream string, dryRun bool) (any, error) {
	return p.collect(ctx, upstream, dryRun)
}
