package serve

// The status board: /readyz, /api/v1/status and the status page read what
// it gathers here (health, storage sizes, whether each listener serves).
// It reads the running upstreams and Redis through boardSource; Start and
// the reloader hand it each upstream's listener and client and point its
// health reports here (healthOf), and Start and Shutdown start and stop it.

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
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

// boardSource is what the board reads of the running process.
type boardSource interface {
	// cacheOf is an upstream's cache and settings as it runs now (a reload
	// may replace them); false before its server is built or once removed.
	cacheOf(name string) (*cache.Cache, config.Upstream, bool)
	// coordDown is when the cluster's Redis stopped answering; zero while
	// it answers or without coordination.
	coordDown() time.Time
}

// board is what the status surface knows per upstream beyond the metrics.
type board struct {
	log     *slog.Logger
	health  *health.Monitor
	metrics *metrics.Metrics
	src     boardSource
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

func newBoard(log *slog.Logger, m *metrics.Metrics, upstreams []config.Upstream, src boardSource) *board {
	ctx, cancel := context.WithCancel(context.Background())
	b := &board{log: log, metrics: m, src: src, ups: map[string]*boardUpstream{}, ctx: ctx, cancel: cancel}
	b.health = health.New(health.Options{
		Interval: ProbeInterval,
		StaleFor: StaleWindow,
		Logger:   log,
		OnChange: func(name string, t health.Transition) { m.For(name).State(t.To) },
	})
	for _, u := range upstreams {
		b.ups[u.Name] = b.newUpstream(u.Name, m.For(u.Name), u.Storage.Path, b.health.Track(u.Name))
	}
	return b
}

func (b *board) newUpstream(name string, m *metrics.Upstream, storage string, h *health.Upstream) *boardUpstream {
	bu := &boardUpstream{
		health: h,
		size:   &sizer{dir: storage, maxAge: StoredBytesMaxAge, b: b},
	}
	h.CheckStore(b.storeCheck(name))
	m.State(health.Unknown) // until the first evidence, so the series exists from the start
	m.StoredBytesFunc(func() (int64, bool) {
		n, _, ok := bu.size.get()
		return n, ok
	})
	m.DiskFunc(b.diskFigures(name, storage))
	m.LocalCacheFunc(func() (int64, bool) {
		c, _, ok := b.src.cacheOf(name)
		if !ok {
			return 0, false
		}
		return c.LocalCopyBytes()
	})
	m.FillsFunc(func() (int64, bool) {
		c, _, ok := b.src.cacheOf(name)
		if !ok {
			return 0, false
		}
		return int64(c.FillsInFlight()), true
	})
	return bu
}

// storeCheck reads whether an upstream's store can be written, as its cache
// records failed writes. The error itself stays in the cache's log line.
func (b *board) storeCheck(name string) health.StoreCheck {
	return func() (string, time.Time, bool) {
		c, _, ok := b.src.cacheOf(name)
		if !ok {
			return "", time.Time{}, false
		}
		op, since, err := c.StorageProblem()
		if err == nil {
			if t := b.src.coordDown(); !t.IsZero() {
				return health.OpCoordination, t, true
			}
		}
		return op, since, err != nil
	}
}

// diskFigures reads, at scrape time, the filesystem holding an upstream's
// storage: its size, free bytes, what fills have reserved there and the
// upstream's watermark in bytes. Without space accounting in the cache
// nothing is reserved, and the figures come from a statfs of the storage
// root.
func (b *board) diskFigures(name, storage string) func() (metrics.Disk, bool) {
	return func() (metrics.Disk, bool) {
		var (
			sp      *disk.Space
			minFree disk.MinFree
		)
		root := storage
		if c, u, ok := b.src.cacheOf(name); ok {
			sp, root, minFree = c.Space(), c.Root(), u.MinFree()
		}
		var (
			u        disk.Usage
			reserved int64
			err      error
		)
		if sp != nil {
			u, err = sp.Usage()
			reserved = sp.Reserved()
		} else {
			u, err = disk.Statfs(root)
		}
		if err != nil {
			return metrics.Disk{}, false
		}
		return metrics.Disk{Size: u.Total, Free: u.Free, Reserved: reserved, MinFree: minFree.For(u.Total)}, true
	}
}

// add tracks an upstream a reload added, probing it at once.
func (b *board) add(name, storage string, m *metrics.Upstream, p health.Pinger) {
	bu := b.newUpstream(name, m, storage, b.health.Add(name, p))
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
		b.metrics.Forget(name)
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
	nh.CheckStore(b.storeCheck(name))
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

// healthOf is what an upstream's proxy and cache report its health to: the
// board's tracker of it at the time of each report, since a reload may give
// the upstream a new tracker (reprobe) while its cache, built before, runs
// on. Metrics are reported to directly.
func (b *board) healthOf(name string) healthOf { return healthOf{b: b, name: name} }

// listener wraps an upstream's listener so readiness can tell whether it is
// still open.
func (b *board) listener(name string, l net.Listener) net.Listener {
	sl := &servingListener{Listener: l}
	b.get(name).listener = sl
	return sl
}

// shareListener makes an upstream without a listener of its own report the
// one-port listener's state.
func (b *board) shareListener(name string, l net.Listener) {
	if sl, ok := l.(*servingListener); ok {
		b.get(name).listener = sl
	}
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

// healthOf implements proxy.Health.
type healthOf struct {
	b    *board
	name string
}

func (h healthOf) tracker() *health.Upstream {
	if bu := h.b.get(h.name); bu != nil {
		return bu.health
	}
	return nil
}

func (h healthOf) Observe(status int, err error) {
	if t := h.tracker(); t != nil {
		t.Observe(status, err)
	}
}

func (h healthOf) Stale(cause string) {
	if t := h.tracker(); t != nil {
		t.Stale(cause)
	}
}

func (h healthOf) BadContent(kind string) {
	if t := h.tracker(); t != nil {
		t.BadContent(kind)
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
	Reason    string       `json:"reason,omitempty"`
	LastError string       `json:"last_error,omitempty"`
}
