package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/recycle"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// reloader applies a new config to the running upstreams: it builds what
// changed, swaps it in behind the listeners, retires what went, and
// restarts the schedulers over the result.
type reloader struct {
	*builder
	lst *listeners
	// warm runs a scheduled warm (the admin backend's).
	warm warm.RunFunc
	// mu makes reloads one at a time, and none once Shutdown has begun.
	mu sync.Mutex
}

// exclusive holds off reloads until the returned func is called.
func (rl *reloader) exclusive() (release func()) {
	rl.mu.Lock()
	return rl.mu.Unlock
}

// startBackground starts GC scheduling and recycling over the current
// upstreams.
func (rl *reloader) startBackground(ctx context.Context) error {
	ups, cfg := rl.lst.snapshot()
	gcTargets := make([]gc.Target, len(ups))
	recycleTargets := make([]recycle.Target, len(ups))
	for i, r := range ups {
		gcTargets[i] = gc.Target{
			Store:    rl.gcStore(r),
			Policy:   gc.Policy{MaxSize: int64(r.cfg.MaxSize), MaxUnused: r.cfg.MaxUnused, Pins: r.cfg.Pins},
			Schedule: r.cfg.GC.Schedule,
		}
		recycleTargets[i] = r.server
	}
	if err := rl.sched.start(ctx, gcTargets, recycleTargets, cfg.Recycle); err != nil {
		return err
	}
	return rl.sched.startWarm(cfg.Warm.Lists, rl.warm)
}

// reload applies next without a restart. Upstreams whose configuration did
// not change keep serving untouched. A changed one (credentials, timeouts,
// remote) gets a new server behind its listener: requests in flight finish
// on the old one. Removed upstreams drain and close; added ones start.
// Listener and storage changes count as a removal plus an addition.
//
// Nothing changes unless every new upstream could be started: an error
// leaves the old configuration running. Admin, listen_all and coordination
// changes need a restart and are reported as an error too.
func (rl *reloader) reload(ctx context.Context, next config.Config) error {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	cur, curCfg := rl.lst.snapshot()
	if next.ListenAll != curCfg.ListenAll || next.Admin.Listen != curCfg.Admin.Listen ||
		next.Admin.Token != curCfg.Admin.Token || next.TLS.Enabled() != curCfg.TLS.Enabled() {
		return errors.New("reload: admin, listen_all and turning tls on or off need a restart")
	}
	if !reflect.DeepEqual(next.Coordination, curCfg.Coordination) {
		// The peer listener and the Redis client live as long as the
		// process; half a cluster on new settings would split it.
		return errors.New("reload: coordination changes need a restart")
	}
	if err := checkPins(ctx, cur, next); err != nil {
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
			if byName[r.name] == nil {
				rl.stores.release(r.cfg.Storage.Path, nil)
			}
			if byName[r.name] == nil {
				rl.board.remove(r.name)
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
			r, err := rl.newRunning(ctx, u, curCfg.ShutdownTimeout, old)
			if err != nil {
				undo()
				return fmt.Errorf("reload %s: %w", u.Name, err)
			}
			changed = append(changed, change{old, r})
		default:
			if old != nil {
				removed = append(removed, old)
			}
			r, err := rl.add(ctx, u, curCfg.ShutdownTimeout, old)
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
	rl.lst.certs.replace(certs)
	rl.sched.stop()
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
				c.new.handler.set(inflight(rl.metrics.For(u.Name), c.new.server))
				ups = append(ups, c.new)
			}
		}
		for _, r := range added {
			if r.name == u.Name {
				ups = append(ups, r)
			}
		}
	}
	rl.lst.set(ups, next)
	for _, c := range changed {
		rl.board.reprobe(c.new.name, c.new.server.Upstream())
		rl.lst.retiring.Go(c.old.server.Close) // drains its App, then shuts it down
	}
	for _, r := range removed {
		rl.lst.retiring.Go(func() { rl.retire(r, next.ShutdownTimeout) })
	}
	for _, r := range added {
		rl.lst.serveUpstream(r)
	}
	if err := rl.startBackground(ctx); err != nil {
		// Schedules were validated with the config; keep serving regardless.
		rl.log.Error("reload: gc scheduling", "err", err)
	}
	rl.log.Info("config reloaded", "kept", len(keep), "changed", len(changed), "added", len(added), "removed", len(removed))
	return nil
}

// add starts what a new upstream needs: its storage lock, listener and
// server. replacing is the same-named upstream it replaces, whose listener
// or storage moved.
func (rl *reloader) add(ctx context.Context, u config.Upstream, drain time.Duration, replacing *running) (*running, error) {
	if u.Listen == "" {
		return nil, errors.New("one-port upstreams cannot be added by a reload")
	}
	if replacing == nil || replacing.cfg.Storage.Path != u.Storage.Path {
		if err := rl.stores.hold(u.Storage.Path); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("tcp", u.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", u.Listen, err)
	}
	r, err := rl.newRunning(ctx, u, drain, nil)
	if err != nil {
		l.Close()
		return nil, err
	}
	if replacing == nil {
		rl.board.add(u.Name, u.Storage.Path, rl.metrics.For(u.Name), r.server.Upstream())
	} else {
		rl.board.reprobe(u.Name, r.server.Upstream())
	}
	r.addr = l.Addr().String()
	r.listener = rl.board.listener(u.Name, rl.lst.certs.listenWith(u.Name, u.TLS, l))
	r.http = rl.lst.httpServer(r.handler)
	return r, nil
}

// retire drains a removed upstream's listener for up to drain and closes
// its server. drain is handed over, not read from the listeners' config: a later reload
// may be replacing the config while this runs.
func (rl *reloader) retire(r *running, drain time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if r.http != nil {
		if err := r.http.Shutdown(ctx); err != nil {
			r.http.Close()
		}
	}
	r.server.Close()
	root := r.cfg.Storage.Path
	rl.stores.release(root, func() bool { return rl.lst.servesStorage(root) })
	if rl.lst.lookup(r.name) == nil {
		rl.board.remove(r.name)
	}
	rl.log.Info("upstream removed", "upstream", r.name)
}
