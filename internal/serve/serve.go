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
	"net/http"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/metrics"
	"github.com/multiproxy/multiproxy/internal/proxy"
	"github.com/multiproxy/multiproxy/internal/recycle"
)

// Process is a running multiproxy.
type Process struct {
	cfg     config.Config
	log     *slog.Logger
	metrics *metrics.Metrics
	board   *board // per-upstream health, sizes and listeners, for status

	mu        sync.Mutex
	upstreams []*running
	recycler  *recycle.Scheduler
	gc        *gc.Scheduler
	locks     map[string]*gc.StoreLock // storage root -> its lock
	spaces    map[uint64]*disk.Space   // filesystem -> its accountant
	certs     *certStore
	reloadMu  sync.Mutex
	retiring  sync.WaitGroup // servers a reload replaced or removed, closing
	onePort   *http.Server
	stopBg    context.CancelFunc
	admin     *http.Server
	adminAddr string
	serveErr  chan error
	closed    bool
	cluster   *cluster // nil without coordination.redis
}

type running struct {
	name     string
	cfg      config.Upstream
	addr     string
	server   *proxy.Server
	guard    *gc.Guard
	handler  *swapHandler
	http     *http.Server // nil when the upstream has no listener of its own
	listener net.Listener
}

// Start listens on every configured address and serves. All listeners are
// bound before any request is served, so a port in use fails the start
// cleanly instead of leaving half a proxy running.
func Start(ctx context.Context, cfg config.Config, log *slog.Logger) (*Process, error) {
	quietDistribution()
	p := &Process{cfg: cfg, log: log, metrics: metrics.New(), serveErr: make(chan error, len(cfg.Upstreams)+1)}
	p.board = newBoard(p)

	// Undo whatever was set up when a later step fails.
	var listeners []net.Listener
	p.locks = map[string]*gc.StoreLock{}
	p.spaces = map[uint64]*disk.Space{}
	p.certs = newCertStore()
	certs, err := loadCerts(cfg)
	if err != nil {
		return nil, err
	}
	p.certs.replace(certs)
	fail := func(err error) (*Process, error) {
		for _, l := range listeners {
			l.Close()
		}
		p.closeServers()
		return nil, err
	}

	if cfg.Coordination.Enabled() {
		if err := p.startCluster(cfg); err != nil {
			return fail(err)
		}
	}

	own := make([]net.Listener, len(cfg.Upstreams)) // nil: reached through listen_all only
	for i, u := range cfg.Upstreams {
		lock, err := gc.HoldStore(u.Storage.Path)
		if err != nil {
			return fail(fmt.Errorf("upstream %s: %w", u.Name, err))
		}
		p.locks[u.Storage.Path] = lock
		if u.Listen == "" {
			continue
		}
		l, err := net.Listen("tcp", u.Listen)
		if err != nil {
			return fail(fmt.Errorf("upstream %s: listen %s: %w", u.Name, u.Listen, err))
		}
		listeners = append(listeners, l)
		own[i] = p.certs.listen(u.Name, l)
	}
	var allL net.Listener
	if cfg.ListenAll != "" {
		l, err := net.Listen("tcp", cfg.ListenAll)
		if err != nil {
			return fail(fmt.Errorf("listen_all: listen %s: %w", cfg.ListenAll, err))
		}
		listeners = append(listeners, l)
		allL = p.certs.listen(onePortKey, l)
	}
	adminL, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return fail(fmt.Errorf("admin: listen %s: %w", cfg.Admin.Listen, err))
	}
	listeners = append(listeners, adminL)

	for i, u := range cfg.Upstreams {
		r, err := p.newRunning(ctx, u, nil)
		if err != nil {
			return fail(err)
		}
		if l := own[i]; l != nil {
			r.addr = l.Addr().String()
			r.listener = p.board.listener(u.Name, l)
			r.http = p.httpServer(r.handler)
		} else {
			r.addr = allL.Addr().String()
		}
		p.board.probe(u.Name, r.server.Upstream())
		p.upstreams = append(p.upstreams, r)
	}
	if err := p.checkPins(ctx, cfg); err != nil {
		return fail(err)
	}
	if err := p.startBackground(ctx); err != nil {
		return fail(err)
	}

	p.adminAddr = adminL.Addr().String()
	p.admin = &http.Server{
		Handler: admin.Handler(admin.Options{
			Backend:  p,
			Metrics:  p.metrics.Handler(),
			Token:    cfg.Admin.Token.Reveal(),
			Loopback: admin.IsLoopback(cfg.Admin.Listen),
			Logger:   log,
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, r := range p.upstreams {
		if r.http == nil {
			continue
		}
		go func() {
			if err := r.http.Serve(r.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.serveErr <- fmt.Errorf("upstream %s: %w", r.name, err)
			}
		}()
		log.Info("serving upstream", "upstream", r.name, "listen", r.addr)
	}
	if allL != nil {
		p.startOnePort(allL)
	}
	go func() {
		if err := p.admin.Serve(adminL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.serveErr <- fmt.Errorf("admin: %w", err)
		}
	}()
	log.Info("admin listener", "listen", p.adminAddr)
	p.board.start()
	return p, nil
}

// httpServer is the client-facing server of a listener.
func (p *Process) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
}

// startOnePort serves every upstream on listen_all. Upstreams without a
// listener of their own count it as theirs for readiness.
func (p *Process) startOnePort(l net.Listener) {
	var shared net.Listener
	for _, r := range p.upstreams {
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
	p.onePort = p.httpServer(proxy.OnePort(p.routes))
	go func() {
		if err := p.onePort.Serve(shared); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.serveErr <- fmt.Errorf("listen_all: %w", err)
		}
	}()
	p.log.Info("serving every upstream on one port", "listen", l.Addr().String())
}

func inflight(obs *metrics.Upstream, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		obs.Begin()
		defer obs.End()
		next.ServeHTTP(w, r)
	})
}

// quietDistribution keeps distribution's global logrus logger to warnings:
// our own slog access log is the one line per request.
func quietDistribution() {
	logrus.SetLevel(logrus.WarnLevel)
}

// Addr is the bound address of an upstream's listener ("" if unknown).
func (p *Process) Addr(name string) string {
	ups, _ := p.snapshot()
	for _, r := range ups {
		if r.name == name {
			return r.addr
		}
	}
	return ""
}

// AdminAddr is the admin listener's bound address.
func (p *Process) AdminAddr() string { return p.adminAddr }

// Shutdown stops accepting, lets in-flight requests finish until ctx ends,
// then shuts every App down exactly once.
func (p *Process) Shutdown(ctx context.Context) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.stopBackground()

	var wg sync.WaitGroup
	errs := make([]error, len(p.upstreams)+1)
	for i, r := range p.upstreams {
		if r.http == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.http.Shutdown(ctx); err != nil {
				errs[i] = fmt.Errorf("drain %s: %w", r.name, err)
				r.http.Close()
			}
		}()
	}
	if p.onePort != nil {
		wg.Go(func() {
			if err := p.onePort.Shutdown(ctx); err != nil {
				p.onePort.Close()
			}
		})
	}
	wg.Go(func() {
		if err := p.admin.Shutdown(ctx); err != nil {
			p.admin.Close()
		}
	})
	wg.Wait()
	// Upstreams a reload replaced or removed finish closing first: their
	// storage locks and fills must be gone before the process says it is.
	p.retiring.Wait()
	p.board.stop()
	p.closeServers()
	if p.cluster != nil {
		p.cluster.stop(ctx)
	}
	return errors.Join(errs...)
}

func (p *Process) closeServers() {
	p.mu.Lock()
	ups, locks := p.upstreams, p.locks
	p.locks = nil
	p.mu.Unlock()
	for _, r := range ups {
		r.server.Close()
	}
	for _, lock := range locks {
		lock.Unlock()
	}
	if p.closed || p.cluster == nil {
		return
	}
	// A failed start: nothing else will stop the cluster's listener.
	p.cluster.stop(context.Background())
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
		case serveErr = <-p.serveErr:
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

// gcMetrics reports collections to the metrics.
type gcMetrics struct{ m *metrics.Metrics }

func (g gcMetrics) Collected(upstream string, r gc.Result, err error) {
	if r.DryRun {
		return // a dry run frees nothing and is not "the last GC"
	}
	u := g.m.For(upstream)
	u.GCRun(r.Duration, r.FreedBytes, int64(r.FreedBlobs+len(r.Evicted)), err)
	byReason := map[string]int{}
	for _, e := range r.Evicted {
		byReason[e.Reason]++
	}
	for reason, n := range byReason {
		u.Evicted(reason, n)
	}
}

// shareListener makes an upstream without a listener of its own report the
// one-port listener's state.
func (b *board) shareListener(name string, l net.Listener) {
	if sl, ok := l.(*servingListener); ok {
		b.get(name).listener = sl
	}
}
