package proxy

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"

	// Storage drivers register themselves in init, as in distribution's
	// cmd/registry.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/storage"
)

// buildApp builds the distribution App that serves one upstream's local
// store, in code: configuration.Parse is never used, so REGISTRY_*
// environment variables cannot reach one App, let alone all of them. The App
// has no proxy section: everything that reaches the upstream is ours
// (internal/cache and internal/upstream), and the App only serves what the
// cache has put in the store.
func buildApp(ctx context.Context, name string, st config.UpstreamStorage) *handlers.App {
	cfg := &configuration.Configuration{
		Version: "0.1",
		Storage: storage.AppStorage(st),
	}
	// Writes come only from our verified fills; clients never push.
	cfg.Storage["delete"] = configuration.Parameters{"enabled": true}
	// The store only ever receives our own fills, never uploads.
	cfg.Storage["maintenance"] = configuration.Parameters{
		"uploadpurging": map[any]any{"enabled": false},
	}
	cfg.HTTP.Secret = "multiproxy-does-not-accept-uploads"
	// What configuration.Parse would default to: with 0, every _catalog
	// page is empty and any n is refused, and the seeds' first check after
	// setup is a _catalog on every port.
	cfg.Catalog.MaxEntries = 1000
	// distribution's loggers read this untyped key to tag an App's lines.
	//lint:ignore SA1029 the key is distribution's, not ours
	ctx = context.WithValue(ctx, "instance.id", name)
	return handlers.NewApp(ctx, cfg)
}

// appHandle is one built App with a count of the requests inside it, so that
// a swap can drain it before shutting it down exactly once.
type appHandle struct {
	app      *handlers.App
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
