package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"sync/atomic"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/proxy"
	"github.com/multiproxy/multiproxy/internal/recycle"
)

// swapHandler lets an upstream's listener keep running while the server
// behind it is replaced (a reload that changed its credentials or timeouts).
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// newRunning builds an upstream's proxy server. Its listener, if any, is the
// caller's business. With replacing set (a reload changed the upstream's
// settings but not its storage), the new server shares the old one's cache
// and GC guard, so running fills finish and commit.
func (p *Process) newRunning(ctx context.Context, u config.Upstream, replacing *running) (*running, error) {
	obs := p.metrics.For(u.Name)
	guard := &gc.Guard{}
	opts := proxy.Options{Logger: p.log, Observer: p.board.observer(u.Name, obs),
		Drain: p.cfg.ShutdownTimeout, Guard: guard,
		MakeRoom:       func(ctx context.Context, n int64) error { return p.makeRoom(ctx, u.Name, n) },
		StoreRecreated: func() { p.relock(u.Name, u.Storage.Path) }}
	if u.Storage.S3.Enabled() {
		// Short of local space, the local copies go, not the bucket's
		// content: other replicas serve from it.
		opts.MakeRoom = nil
	}
	if replacing != nil {
		guard = replacing.guard
		opts.Guard, opts.Reuse = guard, replacing.server
	} else {
		if p.cluster != nil {
			co := p.cluster.co
			obs.CoordinationUp(co.Up())
			opts.Guard = clusterGuard{local: guard, co: co, name: u.Name}
			opts.Coord = fillCoord{co: co, name: u.Name}
			opts.PeerToken = p.cluster.token
			opts.RecordPull = recordPull(co, u.Name)
		}
		space, err := p.spaceFor(localDir(u))
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		opts.Space = space
	}
	srv, err := proxy.New(ctx, u, opts)
	if err != nil {
		return nil, err
	}
	reportPinned(obs, srv.Cache())
	r := &running{name: u.Name, cfg: u, server: srv, guard: guard, handler: &swapHandler{}}
	r.handler.set(inflight(obs, srv))
	return r, nil
}

// relock takes the storage lock again in a store that was deleted and
// recreated under the process: the lock held was on the deleted file, and an
// offline collection must be refused for as long as the store is served.
func (p *Process) relock(name, root string) {
	p.mu.Lock()
	lock := p.locks[root]
	p.mu.Unlock()
	if lock == nil {
		return
	}
	again, err := lock.Relock()
	if err != nil {
		// The process serves the store regardless; the operator must know
		// that an offline collection is not kept out of it.
		p.log.Error("storage lock not held after the store was recreated", "upstream", name, "dir", root, "err", err)
		return
	}
	if again {
		p.log.Warn("storage lock taken again in the recreated store", "upstream", name, "dir", root)
	}
}

// localDir is where an upstream writes on this host: its store, or with
// a bucket its spool and local copies.
func localDir(u config.Upstream) string {
	if u.Storage.S3.Enabled() {
		return u.Storage.LocalCache.Dir
	}
	return u.Storage.Path
}

// spaceFor returns the free-space accountant of the filesystem holding
// root, shared by every upstream stored on it: their fills draw on the same
// free bytes.
func (p *Process) spaceFor(root string) (*disk.Space, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create storage root: %w", err)
	}
	dev, err := disk.Device(root)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.spaces[dev]; s != nil {
		return s, nil
	}
	s := disk.New(root)
	p.spaces[dev] = s
	return s, nil
}

// makeRoom evicts from an upstream's store for a fill that does not fit
// above the watermark, through the current GC scheduler so that it never
// runs beside a collection.
func (p *Process) makeRoom(ctx context.Context, name string, n int64) error {
	p.mu.Lock()
	sched := p.gc
	p.mu.Unlock()
	if sched == nil || !sched.Has(name) {
		return errors.New("no collector for this upstream")
	}
	_, err := sched.MakeRoom(ctx, name, n)
	return err
}

// gcStore is what the collector of an upstream works on; with
// coordination, as the cluster's one collector.
func (p *Process) gcStore(r *running) gc.Store {
	st := gc.StoreOf(r.name, r.server.Cache(), r.guard)
	st.MaxUpload = r.cfg.FillTimeout
	if p.cluster != nil {
		st.Cluster = gcCluster{co: p.cluster.co, name: r.name, obs: p.metrics.For(r.name), log: p.log.With("upstream", r.name)}
	}
	return st
}

// routes lists the upstreams for the one-port listener, as they are now.
func (p *Process) routes() []proxy.Route {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]proxy.Route, len(p.upstreams))
	for i, r := range p.upstreams {
		out[i] = proxy.Route{Server: r.server, Handler: r.handler}
	}
	return out
}

// snapshot is the upstreams and config as they are now.
func (p *Process) snapshot() ([]*running, config.Config) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*running(nil), p.upstreams...), p.cfg
}

// startBackground starts GC scheduling and recycling over the current
// upstreams.
func (p *Process) startBackground(ctx context.Context) error {
	ups, cfg := p.snapshot()
	gcTargets := make([]gc.Target, len(ups))
	recycleTargets := make([]recycle.Target, len(ups))
	for i, r := range ups {
		gcTargets[i] = gc.Target{
			Store:    p.gcStore(r),
			Policy:   gc.Policy{MaxSize: int64(r.cfg.MaxSize), MaxUnused: r.cfg.MaxUnused, Pins: r.cfg.Pins},
			Schedule: r.cfg.GC.Schedule,
		}
		recycleTargets[i] = r.server
	}
	sched, err := gc.NewScheduler(gcTargets, gcMetrics{p.metrics}, p.log)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.gc = sched
	p.mu.Unlock()
	sched.Start()
	p.recycler = recycle.New(recycleTargets, recycle.Options{
		Interval:  cfg.Recycle.Interval,
		MaxMemory: int64(cfg.Recycle.MaxMemory),
		Logger:    p.log,
		Observer:  p.metrics,
	})
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	p.stopBg = stop
	go p.recycler.Run(bg)
	return nil
}

func (p *Process) stopBackground() {
	if p.stopBg != nil {
		p.stopBg()
	}
	if p.gc != nil {
		p.gc.Stop()
	}
}

// Reload applies next without a restart. Upstreams whose configuration did
// not change keep serving untouched. A changed one (credentials, timeouts,
// remote) gets a new server behind its listener: requests in flight finish
// on the old one. Removed upstreams drain and close; added ones start.
// Listener and storage changes count as a removal plus an addition.
//
// Nothing changes unless every new upstream could be started: an error
// leaves the old configuration running. Admin, listen_all and coordination
// changes need a restart and are reported as an error too.
func (p *Process) Reload(ctx context.Context, next config.Config) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	cur, curCfg := p.snapshot()
	if next.ListenAll != curCfg.ListenAll || next.Admin.Listen != curCfg.Admin.Listen ||
		next.Admin.Token != curCfg.Admin.Token || next.TLS.Enabled() != curCfg.TLS.Enabled() {
		return errors.New("reload: admin, listen_all and turning tls on or off need a restart")
	}
	if !reflect.DeepEqual(next.Coordination, curCfg.Coordination) {
		// The peer listener and the Redis client live as long as the
		// process; half a cluster on new settings would split it.
		return errors.New("reload: coordination changes need a restart")
	}
	if err := p.checkPins(ctx, next); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	// Certificates are re-read (a renewed one is the reason for most
	// reloads); they take effect at the next handshake.
	certs, err := loadCerts(next)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}

	byName := map[string]*running{}
	for _, r := range cur {
		byName[r.name] = r
	}
	type change struct {
		old *running
		new *running
	}
	var (
		keep    []*running
		changed []change
		added   []*running
		removed []*running
	)
	undo := func() {
		for _, r := range added {
			if r.http != nil {
				r.http.Close()
			}
			r.server.Close()
			p.mu.Lock()
			if lock := p.locks[r.cfg.Storage.Path]; lock != nil && byName[r.name] == nil {
				lock.Unlock()
				delete(p.locks, r.cfg.Storage.Path)
			}
			p.mu.Unlock()
			if byName[r.name] == nil {
				p.board.remove(r.name)
			}
		}
		for _, c := range changed {
			c.new.server.Close()
		}
	}
	seen := map[string]bool{}
	for _, u := range next.Upstreams {
		seen[u.Name] = true
		old := byName[u.Name]
		switch {
		case old != nil && reflect.DeepEqual(old.cfg, u):
			keep = append(keep, old)
		case old != nil && old.cfg.Listen == u.Listen && old.cfg.TLS.Enabled() != u.TLS.Enabled():
			undo()
			return fmt.Errorf("reload %s: turning tls on or off on a listener needs a restart", u.Name)
		case old != nil && old.cfg.Listen == u.Listen && old.cfg.Storage.Path == u.Storage.Path:
			r, err := p.newRunning(ctx, u, old)
			if err != nil {
				undo()
				return fmt.Errorf("reload %s: %w", u.Name, err)
			}
			changed = append(changed, change{old, r})
		default:
			if old != nil {
				removed = append(removed, old)
			}
			r, err := p.add(ctx, u, old)
			if err != nil {
				undo()
				return fmt.Errorf("reload %s: %w", u.Name, err)
			}
			added = append(added, r)
		}
	}
	for _, r := range cur {
		if !seen[r.name] {
			removed = append(removed, r)
		}
	}

	// Commit: from here nothing fails.
	p.certs.replace(certs)
	p.stopBackground()
	var ups []*running
	for _, u := range next.Upstreams {
		for _, r := range keep {
			if r.name == u.Name {
				ups = append(ups, r)
			}
		}
		for _, c := range changed {
			if c.new.name == u.Name {
				c.new.addr, c.new.http, c.new.listener, c.new.handler = c.old.addr, c.old.http, c.old.listener, c.old.handler
				c.new.server.TakeOver(c.old.server)
				c.new.handler.set(inflight(p.metrics.For(u.Name), c.new.server))
				ups = append(ups, c.new)
			}
		}
		for _, r := range added {
			if r.name == u.Name {
				ups = append(ups, r)
			}
		}
	}
	p.mu.Lock()
	p.upstreams = ups
	p.cfg = next
	p.mu.Unlock()
	for _, c := range changed {
		p.board.reprobe(c.new.name, c.new.server.Upstream())
		p.retiring.Go(c.old.server.Close) // drains its App, then shuts it down
	}
	for _, r := range removed {
		p.retiring.Go(func() { p.retire(r) })
	}
	for _, r := range added {
		go func() {
			if err := r.http.Serve(r.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.serveErr <- fmt.Errorf("upstream %s: %w", r.name, err)
			}
		}()
	}
	if err := p.startBackground(ctx); err != nil {
		// Schedules were validated with the config; keep serving regardless.
		p.log.Error("reload: gc scheduling", "err", err)
	}
	p.log.Info("config reloaded", "kept", len(keep), "changed", len(changed), "added", len(added), "removed", len(removed))
	return nil
}

// add starts what a new upstream needs: its storage lock, listener and
// server. replacing is the same-named upstream it replaces, whose listener
// or storage moved.
func (p *Process) add(ctx context.Context, u config.Upstream, replacing *running) (*running, error) {
	if u.Listen == "" {
		return nil, errors.New("one-port upstreams cannot be added by a reload")
	}
	if replacing == nil || replacing.cfg.Storage.Path != u.Storage.Path {
		lock, err := gc.HoldStore(u.Storage.Path)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.locks[u.Storage.Path] = lock
		p.mu.Unlock()
	}
	l, err := net.Listen("tcp", u.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", u.Listen, err)
	}
	r, err := p.newRunning(ctx, u, nil)
	if err != nil {
		l.Close()
		return nil, err
	}
	if replacing == nil {
		p.board.add(u.Name, u.Storage.Path, p.metrics.For(u.Name), r.server.Upstream())
	} else {
		p.board.reprobe(u.Name, r.server.Upstream())
	}
	r.addr = l.Addr().String()
	r.listener = p.board.listener(u.Name, p.certs.listenWith(u.Name, u.TLS, l))
	r.http = p.httpServer(r.handler)
	return r, nil
}

// retire drains a removed upstream's listener and closes its server.
func (p *Process) retire(r *running) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownTimeout)
	defer cancel()
	if r.http != nil {
		if err := r.http.Shutdown(ctx); err != nil {
			r.http.Close()
		}
	}
	r.server.Close()
	p.mu.Lock()
	storageUsed, nameUsed := false, false
	for _, u := range p.upstreams {
		storageUsed = storageUsed || u.cfg.Storage.Path == r.cfg.Storage.Path
		nameUsed = nameUsed || u.name == r.name
	}
	if lock := p.locks[r.cfg.Storage.Path]; lock != nil && !storageUsed {
		lock.Unlock()
		delete(p.locks, r.cfg.Storage.Path)
	}
	p.mu.Unlock()
	if !nameUsed {
		p.board.remove(r.name)
	}
	p.log.Info("upstream removed", "upstream", r.name)
}
