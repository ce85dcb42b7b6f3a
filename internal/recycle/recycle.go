// Package recycle decides when each upstream's embedded App is rebuilt and
// swapped (the swap itself is internal/proxy's). It replaces the seeds'
// hourly restarts of registry:2, which dropped every pull in flight.
//
// Triggers:
//   - a period: one recycle per upstream per interval, staggered so that
//     targets are recycled one at a time, interval/n apart;
//   - memory: when the Go heap in use passes max_memory, the next target in
//     turn is recycled, at most one per check;
//   - on demand, through Now (the admin API).
//
// A failed recycle leaves the old App serving; the target is retried every
// retry period until a recycle succeeds.
package recycle

import (
	"context"
	"log/slog"
	"runtime/metrics"
	"sync"
	"time"
)

// Reasons, as logged and labelled in metrics.
const (
	ReasonInterval = "interval"
	ReasonMemory   = "memory"
	ReasonAdmin    = "admin"
	ReasonRetry    = "retry"
)

// Target is one upstream's swappable App.
type Target interface {
	Name() string
	Recycle(ctx context.Context) error
}

// Observer is told about every recycle attempt.
type Observer interface {
	Recycled(target, reason string)
	RecycleFailed(target, reason string)
}

// Options configures a Scheduler.
type Options struct {
	Interval  time.Duration
	MaxMemory int64 // bytes of Go heap in use; 0 disables
	// CheckEvery is how often memory is read (default 5 s).
	CheckEvery time.Duration
	// RetryEvery is how soon a failed target is tried again (default 30 s).
	RetryEvery time.Duration
	Logger     *slog.Logger
	Observer   Observer
	// HeapInUse reads memory; tests replace it.
	HeapInUse func() int64
}

// Scheduler recycles targets.
type Scheduler struct {
	o       Options
	targets []Target

	mu     sync.Mutex // serialises recycles across targets
	next   int
	failed map[string]bool
}

// New returns a scheduler over targets.
func New(targets []Target, o Options) *Scheduler {
	if o.CheckEvery <= 0 {
		o.CheckEvery = 5 * time.Second
	}
	if o.RetryEvery <= 0 {
		o.RetryEvery = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HeapInUse == nil {
		o.HeapInUse = heapInUse
	}
	return &Scheduler{o: o, targets: targets, failed: map[string]bool{}}
}

// Run drives the triggers until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	if len(s.targets) == 0 {
		return
	}
	// One tick per target per interval: consecutive targets are interval/n
	// apart, so no two ever recycle together.
	var tickC <-chan time.Time
	if period := s.o.Interval / time.Duration(len(s.targets)); period > 0 {
		tick := time.NewTicker(period)
		defer tick.Stop()
		tickC = tick.C
	}
	check := time.NewTicker(s.o.CheckEvery)
	defer check.Stop()
	retry := time.NewTicker(s.o.RetryEvery)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tickC:
			s.recycleNext(ctx, ReasonInterval)
		case <-check.C:
			if s.o.MaxMemory > 0 && s.o.HeapInUse() > s.o.MaxMemory {
				s.recycleNext(ctx, ReasonMemory)
			}
		case <-retry.C:
			s.retryFailed(ctx)
		}
	}
}

// Now recycles the named target at once. It reports false if no target has
// that name.
func (s *Scheduler) Now(ctx context.Context, name string) (bool, error) {
	for _, t := range s.targets {
		if t.Name() == name {
			return true, s.recycle(ctx, t, ReasonAdmin)
		}
	}
	return false, nil
}

func (s *Scheduler) recycleNext(ctx context.Context, reason string) {
	s.mu.Lock()
	t := s.targets[s.next%len(s.targets)]
	s.next++
	s.mu.Unlock()
	_ = s.recycle(ctx, t, reason)
}

func (s *Scheduler) retryFailed(ctx context.Context) {
	for _, t := range s.targets {
		s.mu.Lock()
		failed := s.failed[t.Name()]
		s.mu.Unlock()
		if failed {
			_ = s.recycle(ctx, t, ReasonRetry)
		}
	}
}

func (s *Scheduler) recycle(ctx context.Context, t Target, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	err := t.Recycle(ctx)
	if err != nil {
		s.failed[t.Name()] = true
		s.o.Logger.Warn("recycle failed; the current app keeps serving", "upstream", t.Name(), "reason", reason, "err", err)
		if s.o.Observer != nil {
			s.o.Observer.RecycleFailed(t.Name(), reason)
		}
		return err
	}
	delete(s.failed, t.Name())
	s.o.Logger.Info("recycled", "upstream", t.Name(), "reason", reason, "took", time.Since(start))
	if s.o.Observer != nil {
		s.o.Observer.Recycled(t.Name(), reason)
	}
	return nil
}

var heapSample = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}

// heapInUse reads the live heap without stopping the world.
func heapInUse() int64 {
	s := make([]metrics.Sample, len(heapSample))
	copy(s, heapSample)
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}
