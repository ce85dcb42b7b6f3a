package serve

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/metrics"
	"github.com/multiproxy/multiproxy/internal/recycle"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// schedulers runs the background work over the upstreams: GC on its
// schedules (and eviction when a fill does not fit), and App recycling. A
// reload stops them and starts new ones over the new upstreams.
type schedulers struct {
	log     *slog.Logger
	metrics *metrics.Metrics

	mu       sync.Mutex
	gc       *gc.Scheduler
	recycler *recycle.Scheduler
	stopBg   context.CancelFunc
	// warm re-warms warmLists on their schedules; a reload keeps it
	// when the lists did not change (warm.go).
	warm      *warm.Scheduler
	warmLists []config.WarmList
}

func newSchedulers(log *slog.Logger, m *metrics.Metrics) *schedulers {
	return &schedulers{log: log, metrics: m}
}

// start starts GC scheduling over gcTargets and recycling over
// recycleTargets.
func (s *schedulers) start(ctx context.Context, gcTargets []gc.Target, recycleTargets []recycle.Target, rc config.Recycle) error {
	sched, err := gc.NewScheduler(gcTargets, gcMetrics{s.metrics}, s.log)
	if err != nil {
		return err
	}
	recycler := recycle.New(recycleTargets, recycle.Options{
		Interval:  rc.Interval,
		MaxMemory: int64(rc.MaxMemory),
		Logger:    s.log,
		Observer:  s.metrics,
	})
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.gc, s.recycler, s.stopBg = sched, recycler, stop
	s.mu.Unlock()
	sched.Start()
	go recycler.Run(bg)
	return nil
}

// stop ends recycling and GC scheduling.
func (s *schedulers) stop() {
	s.mu.Lock()
	sched, stop := s.gc, s.stopBg
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	if sched != nil {
		sched.Stop()
	}
}

func (s *schedulers) current() (*gc.Scheduler, *recycle.Scheduler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gc, s.recycler
}

// makeRoom evicts from an upstream's store for a fill that does not fit
// above the watermark, through the current GC scheduler so that it never
// runs beside a collection.
func (s *schedulers) makeRoom(ctx context.Context, name string, n int64) error {
	sched, _ := s.current()
	if sched == nil || !sched.Has(name) {
		return errors.New("no collector for this upstream")
	}
	_, err := sched.MakeRoom(ctx, name, n)
	return err
}

// collect runs one upstream's GC now (the admin API's gc).
func (s *schedulers) collect(ctx context.Context, name string, dryRun bool) (gc.Result, error) {
	sched, _ := s.current()
	if sched == nil || !sched.Has(name) {
		return gc.Result{}, &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream named %q", name)}
	}
	return sched.Run(ctx, name, dryRun)
}

// recycleNow rebuilds one upstream's App at once (the admin API's recycle).
func (s *schedulers) recycleNow(ctx context.Context, name string) error {
	_, recycler := s.current()
	ok := false
	var err error
	if recycler != nil {
		ok, err = recycler.Now(ctx, name)
	}
	if !ok {
		return &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream named %q", name)}
	}
	if err != nil {
		// The old App keeps serving; the recycle is retried on its own.
		return &admin.StatusError{Status: http.StatusServiceUnavailable, Err: err}
	}
	return nil
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
