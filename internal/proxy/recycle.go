package proxy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"github.com/distribution/distribution/v3/registry/handlers"
)

// openApps counts embedded Apps built and not yet shut down, process-wide,
// so tests can prove recycling leaves none behind.
var openApps atomic.Int64

// OpenApps is the number of embedded distribution Apps currently open.
func OpenApps() int64 { return openApps.Load() }

// errUpstreamDown refuses a recycle that would trade a proxy-mode App for a
// cache-only one.
var errUpstreamDown = errors.New("upstream unreachable: keeping the current app")

// Recycle builds a fresh App and swaps it in. New requests go to the new App
// at once; the old one finishes its in-flight requests (bounded by the drain
// timeout) and is then shut down exactly once. If the new App cannot be built
// the old one keeps serving and the error is returned for the caller to
// count and retry.
func (s *Server) Recycle(ctx context.Context) error {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	if s.closed {
		return fmt.Errorf("recycle %s: server closed", s.cfg.Name)
	}
	wasProxied := s.apps.current().proxied
	h, err := s.build(ctx)
	if err != nil {
		return fmt.Errorf("recycle %s: %w", s.cfg.Name, err)
	}
	if wasProxied && !h.proxied {
		h.shutdown(0)
		return fmt.Errorf("recycle %s: %w", s.cfg.Name, errUpstreamDown)
	}
	s.install(h)
	// Forget revalidation times too: they are the cache layer's only
	// unbounded-by-config state.
	s.cache.ResetFreshness()
	return nil
}

// install publishes h and retires the previous App in the background.
// Callers hold swapMu.
func (s *Server) install(h *appHandle) {
	old := s.apps.swap(h)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		old.shutdown(s.drain)
		// Hand the old App's memory back to the OS now rather than when
		// the scavenger gets to it: flat RSS is the point of recycling.
		debug.FreeOSMemory()
	}()
}

// closeEventSink stops the go-events broadcaster goroutine that
// handlers.NewApp starts for notifications and App.Shutdown never stops
// (distribution v3.1.x): without this every recycle would leak one goroutine
// and its queue. The sink is unexported, so it is reached by reflection; if
// a future distribution renames the field this does nothing, and the
// recycle leak test fails loudly instead of the process leaking quietly.
func closeEventSink(app *handlers.App) {
	events := reflect.ValueOf(app).Elem().FieldByName("events")
	if !events.IsValid() {
		return
	}
	sink := events.FieldByName("sink")
	if !sink.IsValid() || sink.Kind() != reflect.Interface {
		return
	}
	sink = reflect.NewAt(sink.Type(), unsafe.Pointer(sink.UnsafeAddr())).Elem()
	if sink.IsNil() {
		return
	}
	if c, ok := sink.Interface().(interface{ Close() error }); ok {
		_ = c.Close()
	}
}
