package serve

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/metrics"
	"github.com/multiproxy/multiproxy/internal/proxy"
)

// running is one upstream as it runs: its proxy server, the handler its
// listener serves, and the listener if it has one of its own.
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

// builder makes an upstream's proxy server out of what it shares with the
// rest of the process: metrics and the status board, the storage locks and
// space accounting, eviction through the GC scheduler, and the cluster.
type builder struct {
	log     *slog.Logger
	metrics *metrics.Metrics
	board   *board
	cluster *cluster // nil without coordination
	stores  *stores
	sched   *schedulers
}

// swapHandler lets an upstream's listener keep running while the server
// behind it is replaced (a reload that changed its credentials or timeouts).
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// newRunning builds an upstream's proxy server, whose App drains for up to
// drain when it is replaced or closed. Its listener, if any, is the
// caller's business. With replacing set (a reload changed the upstream's
// settings but not its storage), the new server shares the old one's cache
// and GC guard, so running fills finish and commit.
func (b *builder) newRunning(ctx context.Context, u config.Upstream, drain time.Duration, replacing *running) (*running, error) {
	obs := b.metrics.For(u.Name)
	guard := &gc.Guard{}
	opts := proxy.Options{Logger: b.log, Observer: obs, Health: b.board.healthOf(u.Name),
		Drain: drain, Guard: guard,
		MakeRoom:       func(ctx context.Context, n int64) error { return b.sched.makeRoom(ctx, u.Name, n) },
		StoreRecreated: func() { b.stores.relock(u.Name, u.Storage.Path) }}
	if u.Storage.S3.Enabled() {
		// Short of local space, the local copies go, not the bucket's
		// content: other replicas serve from it.
		opts.MakeRoom = nil
	}
	if replacing != nil {
		guard = replacing.guard
		opts.Guard, opts.Reuse = guard, replacing.server
	} else {
		if b.cluster != nil {
			co := b.cluster.co
			obs.CoordinationUp(co.Up())
			opts.Guard = clusterGuard{local: guard, co: co, name: u.Name}
			opts.Coord = fillCoord{co: co, name: u.Name}
			opts.PeerToken = b.cluster.token
			opts.RecordPull = recordPull(co, u.Name)
		}
		space, err := b.stores.spaceFor(localDir(u))
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

// gcStore is what the collector of an upstream works on; with
// coordination, as the cluster's one collector.
func (b *builder) gcStore(r *running) gc.Store {
	st := gc.StoreOf(r.name, r.server.Cache(), r.guard)
	st.MaxUpload = r.cfg.FillTimeout
	if b.cluster != nil {
		st.Cluster = gcCluster{co: b.cluster.co, name: r.name, obs: b.metrics.For(r.name), log: b.log.With("upstream", r.name)}
	}
	return st
}

func inflight(obs *metrics.Upstream, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		obs.Begin()
		defer obs.End()
		next.ServeHTTP(w, r)
	})
}
