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

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/proxy"
)

// listeners is the upstreams as they run now and the HTTP servers in front
// of them: one per upstream with a listener of its own, listen_all's, and
// the admin listener. It serves them, reports a server that fails, and
// drains them all on shutdown.
type listeners struct {
	log   *slog.Logger
	certs *certStore
	// errs receives the failure of a server; Run stops at the first.
	errs chan error
	// retiring counts the upstreams a reload replaced or removed that are
	// still closing.
	retiring sync.WaitGroup

	mu        sync.Mutex
	cfg       config.Config
	upstreams []*running
	onePort   *http.Server
	admin     *http.Server
	adminAddr string
	closed    bool
}

func newListeners(cfg config.Config, log *slog.Logger) *listeners {
	return &listeners{log: log, cfg: cfg, certs: newCertStore(), errs: make(chan error, len(cfg.Upstreams)+2)}
}

// snapshot is the upstreams and config as they are now.
func (l *listeners) snapshot() ([]*running, config.Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*running(nil), l.upstreams...), l.cfg
}

// set makes ups and cfg the ones running now.
func (l *listeners) set(ups []*running, cfg config.Config) {
	l.mu.Lock()
	l.upstreams, l.cfg = ups, cfg
	l.mu.Unlock()
}

// lookup is the named upstream as it runs now, or nil.
func (l *listeners) lookup(name string) *running {
	ups, _ := l.snapshot()
	for _, r := range ups {
		if r.name == name && r.server != nil {
			return r
		}
	}
	return nil
}

// cacheOf is the named upstream's cache and settings as they run now.
func (l *listeners) cacheOf(name string) (*cache.Cache, config.Upstream, bool) {
	r := l.lookup(name)
	if r == nil {
		return nil, config.Upstream{}, false
	}
	return r.server.Cache(), r.cfg, true
}

// servesStorage reports whether a running upstream is stored under root.
func (l *listeners) servesStorage(root string) bool {
	ups, _ := l.snapshot()
	for _, r := range ups {
		if r.cfg.Storage.Path == root {
			return true
		}
	}
	return false
}

// addr is the bound address of an upstream's listener ("" if unknown).
func (l *listeners) addr(name string) string {
	if r := l.lookup(name); r != nil {
		return r.addr
	}
	return ""
}

// routes lists the upstreams for the one-port listener, as they are now.
func (l *listeners) routes() []proxy.Route {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]proxy.Route, len(l.upstreams))
	for i, r := range l.upstreams {
		out[i] = proxy.Route{Server: r.server, Handler: r.handler}
	}
	return out
}

// httpServer is the client-facing server of a listener.
func (l *listeners) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelWarn),
	}
}

// serve serves srv on ln until it is shut down; what failed is named by
// what.
func (l *listeners) serve(what string, srv *http.Server, ln net.Listener) {
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.errs <- fmt.Errorf("%s: %w", what, err)
		}
	}()
}

// serveUpstream serves an upstream on its own listener.
func (l *listeners) serveUpstream(r *running) {
	l.serve("upstream "+r.name, r.http, r.listener)
}

// serveOnePort serves every upstream on listen_all, on ln as the board
// wrapped it.
func (l *listeners) serveOnePort(ln net.Listener, addr string) {
	srv := l.httpServer(proxy.OnePort(l.routes))
	l.mu.Lock()
	l.onePort = srv
	l.mu.Unlock()
	l.serve("listen_all", srv, ln)
	l.log.Info("serving every upstream on one port", "listen", addr)
}

// serveAdmin serves the admin API on ln.
func (l *listeners) serveAdmin(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	l.mu.Lock()
	l.admin, l.adminAddr = srv, ln.Addr().String()
	l.mu.Unlock()
	l.serve("admin", srv, ln)
	l.log.Info("admin listener", "listen", ln.Addr().String())
}

// adminAddress is the admin listener's bound address.
func (l *listeners) adminAddress() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.adminAddr
}

// close marks the process as shutting down; false if it already was.
func (l *listeners) close() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.closed = true
	return true
}

// isClosed reports whether the process is shutting down.
func (l *listeners) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// drain stops accepting on every listener and lets the requests in flight
// finish until ctx ends, then waits for the upstreams a reload retired.
func (l *listeners) drain(ctx context.Context) error {
	ups, _ := l.snapshot()
	l.mu.Lock()
	onePort, adminSrv := l.onePort, l.admin
	l.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(ups)+1)
	for i, r := range ups {
		if r.http == nil {
			continue
		}
		wg.Go(func() {
			if err := r.http.Shutdown(ctx); err != nil {
				errs[i] = fmt.Errorf("drain %s: %w", r.name, err)
				r.http.Close()
			}
		})
	}
	for _, srv := range []*http.Server{onePort, adminSrv} {
		if srv == nil {
			continue
		}
		wg.Go(func() {
			if err := srv.Shutdown(ctx); err != nil {
				srv.Close()
			}
		})
	}
	wg.Wait()
	// Upstreams a reload replaced or removed finish closing first: their
	// storage locks and fills must be gone before the process says it is.
	l.retiring.Wait()
	return errors.Join(errs...)
}

// closeServers closes every upstream's server, and with it its App.
func (l *listeners) closeServers() {
	ups, _ := l.snapshot()
	for _, r := range ups {
		r.server.Close()
	}
}
