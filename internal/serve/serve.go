// Package serve runs a whole multiproxy process: one listener and proxy.Server
// per upstream, the admin listener, and an orderly drain on shutdown. It is
// the wiring cmd/multiproxy calls; the request path lives in internal/proxy.
package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/distlog"
	"github.com/multiproxy/multiproxy/internal/metrics"
)

// Process is a running multiproxy: a thin composition of parts that each
// own their state and their lock.
type Process struct {
	lst     *listeners  // the running upstreams, their listeners and drain
	stores  *stores     // storage locks and space accounting
	sched   *schedulers // GC and recycling
	cluster *cluster    // Redis and the peer listener; nil without coordination
	board   *board      // per-upstream health, sizes and listeners, for status
	backend *backend    // the admin API's backend
	reload  *reloader
}

// Start listens on every configured address and serves. All listeners are
// bound before any request is served, so a port in use fails the start
// cleanly instead of leaving half a proxy running.
func Start(ctx context.Context, cfg config.Config, log *slog.Logger) (*Process, error) {
	// Distribution's warnings join our log; its per-request info lines do
	// not: our own access log is the one line per request.
	distlog.Install(log.Handler())
	certs, err := loadCerts(cfg)
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	p := &Process{lst: newListeners(cfg, log), stores: newStores(log), sched: newSchedulers(log, m)}
	p.lst.certs.replace(certs)

	// Undo whatever was set up when a later step fails.
	var bound []net.Listener
	fail := func(err error) (*Process, error) {
		for _, l := range bound {
			l.Close()
		}
		p.closeServers()
		// Nothing else will stop the cluster's listener.
		p.cluster.stop(context.Background())
		return nil, err
	}

	if cfg.Coordination.Enabled() {
		cl, err := startCluster(cfg, log, m, p.lst)
		if err != nil {
			return fail(err)
		}
		p.cluster = cl
	}
	p.board = newBoard(log, m, cfg.Upstreams, boardView{ups: p.lst, cl: p.cluster})
	build := &builder{log: log, metrics: m, board: p.board, cluster: p.cluster, stores: p.stores, sched: p.sched}
	p.backend = &backend{log: log, metrics: m, ups: p.lst, sched: p.sched, board: p.board, clustered: p.cluster != nil}
	p.reload = &reloader{builder: build, lst: p.lst, warm: p.backend.warm}

	own := make([]net.Listener, len(cfg.Upstreams)) // nil: reached through listen_all only
	for i, u := range cfg.Upstreams {
		if err := p.stores.hold(u.Storage.Path); err != nil {
			return fail(fmt.Errorf("upstream %s: %w", u.Name, err))
		}
		if u.Listen == "" {
			continue
		}
		l, err := net.Listen("tcp", u.Listen)
		if err != nil {
			return fail(fmt.Errorf("upstream %s: listen %s: %w", u.Name, u.Listen, err))
		}
		bound = append(bound, l)
		own[i] = p.lst.certs.listen(u.Name, l)
	}
	var allL net.Listener
	if cfg.ListenAll != "" {
		l, err := net.Listen("tcp", cfg.ListenAll)
		if err != nil {
			return fail(fmt.Errorf("listen_all: listen %s: %w", cfg.ListenAll, err))
		}
		bound = append(bound, l)
		allL = p.lst.certs.listen(onePortKey, l)
	}
	adminL, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fail(fmt.Errorf("admin: listen %s: %w", cfg.Admin.Listen, err))
	}
	bound = append(bound, adminL)

	var ups []*running
	for i, u := range cfg.Upstreams {
		r, err := build.newRunning(ctx, u, cfg.ShutdownTimeout, nil)
		if err != nil {
			return fail(err)
		}
		if l := own[i]; l != nil {
			r.addr = l.Addr().String()
			r.listener = p.board.listener(u.Name, l)
			r.http = p.lst.httpServer(r.handler)
		} else {
			r.addr = allL.Addr().String()
		}
		p.board.probe(u.Name, r.server.Upstream())
		ups = append(ups, r)
		p.lst.set(ups, cfg)
	}
	if err := checkPins(ctx, ups, cfg); err != nil {
		return fail(err)
	}
	if err := p.reload.startBackground(ctx); err != nil {
		return fail(err)
	}

	adminH := admin.Handler(admin.Options{
		Backend:  p.backend,
		Metrics:  m.Handler(),
		Token:    cfg.Admin.Token.Reveal(),
		Loopback: admin.IsLoopback(cfg.Admin.Listen),
		Logger:   log,
	})
	for _, r := range ups {
		if r.http == nil {
			continue
		}
		p.lst.serveUpstream(r)
		log.Info("serving upstream", "upstream", r.name, "listen", r.addr)
	}
	if allL != nil {
		p.startOnePort(ups, allL)
	}
	p.lst.serveAdmin(adminL, adminH)
	p.board.start()
	return p, nil
}

// startOnePort serves every upstream on listen_all. Upstreams without a
// listener of their own count it as theirs for readiness.
func (p *Process) startOnePort(ups []*running, l net.Listener) {
	var shared net.Listener
	for _, r := range ups {
		if r.http == nil {
			if shared == nil {
				shared = p.board.listener(r.name, l)
			} else {
				p.board.shareListener(r.name, shared)
			}
		}
	}
	if shared == nil {
		shared = l
	}
	p.lst.serveOnePort(shared, l.Addr().String())
}

// boardView is what the board reads of the process: the running upstreams'
// caches and the cluster's Redis.
type boardView struct {
	ups *listeners
	cl  *cluster
}

func (v boardView) cacheOf(name string) (*cache.Cache, config.Upstream, bool) {
	return v.ups.cacheOf(name)
}

func (v boardView) coordDown() time.Time { return v.cl.coordDown() }

// Addr is the bound address of an upstream's listener ("" if unknown).
func (p *Process) Addr(name string) string { return p.lst.addr(name) }

// AdminAddr is the admin listener's bound address.
func (p *Process) AdminAddr() string { return p.lst.adminAddress() }

// Ready is the admin API's readiness: see backend.Ready.
func (p *Process) Ready() (bool, any) { return p.backend.Ready() }

// Reload applies next without a restart: see reloader.reload.
func (p *Process) Reload(ctx context.Context, next config.Config) error {
	return p.reload.reload(ctx, next)
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// then shuts every App down exactly once.
func (p *Process) Shutdown(ctx context.Context) error {
	defer p.reload.exclusive()()
	if !p.lst.close() {
		return nil
	}
	p.sched.stop()
	p.sched.stopWarm()
	err := p.lst.drain(ctx)
	p.board.stop()
	p.closeServers()
	p.cluster.stop(ctx)
	return err
}

// closeServers closes every upstream's server, then gives up the storage
// locks: no fill writes to the stores any more.
func (p *Process) closeServers() {
	p.lst.closeServers()
	p.stores.releaseAll()
}

// Hooks connect Run to its environment (signals, systemd).
type Hooks struct {
	// Ready is called once every listener is bound, and again after each
	// reload attempt, accepted or not.
	Ready func()
	// Reloads asks for a config reload (SIGHUP); Load reads the new config.
	Reloads <-chan struct{}
	Load    func() (config.Config, error)
	// Reloading is called when a reload starts.
	Reloading func()
}

// Run serves until ctx is cancelled, then drains for cfg.ShutdownTimeout. A
// reload whose new config is invalid, or cannot be applied, is logged and
// the running configuration stays.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, h Hooks) error {
	call := func(f func()) {
		if f != nil {
			f()
		}
	}
	p, err := Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	call(h.Ready)
	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "drain", cfg.ShutdownTimeout)
			break loop
		case serveErr = <-p.lst.errs:
			log.Error("listener failed", "err", serveErr)
			break loop
		case <-h.Reloads:
			call(h.Reloading)
			next, err := h.Load()
			if err == nil {
				err = p.Reload(ctx, next)
			}
			if err != nil {
				log.Error("config reload rejected; the running configuration stays", "err", err)
			} else {
				cfg = next
			}
			call(h.Ready)
		}
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, p.Shutdown(sctx))
}
