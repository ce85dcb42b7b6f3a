package proxy

import (
	"context"
	"fmt"
	"reflect"
	"runtime/debug"
	"unsafe"

	"github.com/distribution/distribution/v3/registry/handlers"
)

// Recycle builds a fresh App and swaps it in. New requests go to the new App
// at once; the old one finishes its in-flight requests (bounded by the drain
// timeout) and is then shut down exactly once. The App only serves the local
// store, so building one needs neither the upstream nor anything that can
// fail once the server runs; a closed server refuses.
func (s *Server) Recycle(ctx context.Context) error {
	s.swapMu.Lock()
	defer s.swapMu.Unlock()
	if s.closed {
		return fmt.Errorf("recycle %s: server closed", s.cfg.Name)
	}
	s.install(&appHandle{app: buildApp(s.ctx, s.cfg.Name, s.cfg.Storage)})
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
