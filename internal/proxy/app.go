package proxy

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"

	// Storage drivers and the proxy register themselves in init, as in
	// distribution's cmd/registry.
	_ "github.com/distribution/distribution/v3/registry/proxy"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// appSpec is what an embedded distribution App is built from.
type appSpec struct {
	name     string
	root     string
	remote   string // empty: local-only App (the upstream was unreachable)
	username string
	password string
}

// buildApp builds a distribution App in code. configuration.Parse is never
// used, so REGISTRY_* environment variables cannot reach one App, let alone
// all of them. NewApp reports setup errors by panicking; they become errors.
func buildApp(ctx context.Context, s appSpec) (app *handlers.App, err error) {
	defer func() {
		if r := recover(); r != nil {
			app, err = nil, fmt.Errorf("build registry app for %s: %v", s.name, r)
		}
	}()
	zero := time.Duration(0)
	cfg := &configuration.Configuration{
		Version: "0.1",
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": s.root},
			// Writes come only from our verified fills; clients never push.
			"delete": configuration.Parameters{"enabled": true},
		},
	}
	cfg.HTTP.Secret = "multiproxy-does-not-accept-uploads"
	if s.remote != "" {
		cfg.Proxy = configuration.Proxy{
			RemoteURL: s.remote,
			Username:  s.username,
			Password:  s.password,
			// TTL 0 turns distribution's scheduler off: it keeps a timer per
			// object and a state file, and frees nothing without delete.
			// Eviction is ours (internal/gc).
			TTL: &zero,
		}
	}
	// distribution's loggers read this untyped key to tag an App's lines.
	//lint:ignore SA1029 the key is distribution's, not ours
	ctx = context.WithValue(ctx, "instance.id", s.name)
	app = handlers.NewApp(ctx, cfg)
	openApps.Add(1)
	return app, nil
}

// appHandle is one built App with a count of the requests inside it, so that
// a swap can drain it before shutting it down exactly once.
type appHandle struct {
	app      *handlers.App
	proxied  bool
	inflight sync.WaitGroup
	closed   atomic.Bool
}

func (h *appHandle) shutdown(drain time.Duration) {
	if !h.closed.CompareAndSwap(false, true) {
		return
	}
	done := make(chan struct{})
	go func() { h.inflight.Wait(); close(done) }()
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	_ = h.app.Shutdown()
	closeEventSink(h.app)
	openApps.Add(-1)
}

// appSlot holds the current App of an upstream. Requests acquire the current
// handle; a swap publishes a new one and drains the old in the background.
type appSlot struct {
	mu  sync.RWMutex
	cur *appHandle
}

func (s *appSlot) acquire() *appHandle {
	s.mu.RLock()
	h := s.cur
	h.inflight.Add(1)
	s.mu.RUnlock()
	return h
}

func (s *appSlot) swap(n *appHandle) (old *appHandle) {
	s.mu.Lock()
	old, s.cur = s.cur, n
	s.mu.Unlock()
	return old
}

func (s *appSlot) current() *appHandle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur
}

// serve runs r through the current App.
func (s *appSlot) serve(w http.ResponseWriter, r *http.Request) {
	h := s.acquire()
	defer h.inflight.Done()
	h.app.ServeHTTP(w, r)
}
