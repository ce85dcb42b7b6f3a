package gc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// DefaultSpacing separates the generated weekly slots of consecutive
// upstreams: longer than a collection of a large store takes, so that even
// without the global slot they would not overlap.
const DefaultSpacing = 30 * time.Minute

// DefaultSchedules gives n upstreams weekly slots on Sunday from 03:00,
// DefaultSpacing apart.
func DefaultSchedules(n int) []string {
	out := make([]string, n)
	for i := range n {
		offset := time.Duration(i) * DefaultSpacing
		minutes := int(offset / time.Minute)
		out[i] = fmt.Sprintf("%d %d * * %d", minutes%60, 3+minutes/60%21, (minutes/60/21)%7)
	}
	return out
}

// Target is one upstream's collection set-up.
type Target struct {
	Store    Store
	Policy   Policy
	Schedule string // "" for the generated default
}

// Observer is told about collections.
type Observer interface {
	Collected(upstream string, r Result, err error)
}

// Scheduler runs each target's collection on its cron schedule, one at a
// time process-wide.
type Scheduler struct {
	cron    *cron.Cron
	slot    sync.Mutex // the global GC slot: one collection's I/O at a time
	targets map[string]Target
	obs     Observer
	log     *slog.Logger
	ctx     context.Context
	cancel  context.CancelFunc
}

// NewScheduler parses every schedule; an explicit one overrides the
// generated slot of its upstream.
func NewScheduler(targets []Target, obs Observer, log *slog.Logger) (*Scheduler, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scheduler{
		cron:    cron.New(),
		targets: map[string]Target{},
		obs:     obs,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
	}
	defaults := DefaultSchedules(len(targets))
	for i, t := range targets {
		spec := t.Schedule
		if spec == "" {
			spec = defaults[i]
		}
		name := t.Store.Name
		s.targets[name] = t
		if _, err := s.cron.AddFunc(spec, func() { _, _ = s.Run(scheduled(s.ctx), name, false) }); err != nil {
			cancel()
			return nil, fmt.Errorf("gc schedule of %s %q: %w", name, spec, err)
		}
		log.Info("gc scheduled", "upstream", name, "schedule", spec)
	}
	return s, nil
}

// Start starts the cron.
func (s *Scheduler) Start() { s.cron.Start() }

// Stop stops scheduling and waits for a running collection to finish.
func (s *Scheduler) Stop() {
	s.cancel()
	<-s.cron.Stop().Done()
	s.slot.Lock()
	defer s.slot.Unlock() // waits for a run that holds the slot
}

// Has reports whether an upstream is collected by this scheduler.
func (s *Scheduler) Has(name string) bool { _, ok := s.targets[name]; return ok }

// MakeRoom evicts from one upstream's store until at least n bytes are
// freed, least recently pulled and untagged first, as a fill that does not
// fit above the disk's watermark needs. It waits for the global slot like
// any collection, so it never runs beside one.
func (s *Scheduler) MakeRoom(ctx context.Context, name string, n int64) (Result, error) {
	t, ok := s.targets[name]
	if !ok {
		return Result{}, fmt.Errorf("no upstream named %q", name)
	}
	p := t.Policy
	p.Free = n
	s.slot.Lock()
	defer s.slot.Unlock()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	r, err := Collect(ctx, t.Store, p, false, s.log)
	if err != nil {
		s.log.Error("evict for space failed", "upstream", name, "err", err)
	} else {
		s.log.Info("evicted for space", "upstream", name, "wanted_bytes", n, "freed_bytes", r.FreedBytes,
			"evicted", len(r.Evicted), "took", r.Duration)
	}
	if s.obs != nil {
		s.obs.Collected(name, r, err)
	}
	return r, err
}

// Run collects one upstream now, waiting for the global slot.
func (s *Scheduler) Run(ctx context.Context, name string, dryRun bool) (Result, error) {
	t, ok := s.targets[name]
	if !ok {
		return Result{}, fmt.Errorf("no upstream named %q", name)
	}
	s.slot.Lock()
	defer s.slot.Unlock()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	r, err := Collect(ctx, t.Store, t.Policy, dryRun, s.log)
	if err == nil && r.Skipped != "" {
		s.log.Info("gc skipped", "upstream", name, "why", r.Skipped)
		return r, nil
	}
	if err != nil {
		s.log.Error("gc failed", "upstream", name, "err", err)
	} else {
		s.log.Info("gc done", "upstream", name, "dry_run", dryRun, "freed_bytes", r.FreedBytes,
			"freed_blobs", r.FreedBlobs, "evicted", len(r.Evicted), "spared", r.Spared, "took", r.Duration)
	}
	if s.obs != nil {
		s.obs.Collected(name, r, err)
	}
	return r, err
}

type scheduledKey struct{}

// scheduled marks a collection its cron slot started, as opposed to one
// an operator or a fill short of space asked for.
func scheduled(ctx context.Context) context.Context {
	return context.WithValue(ctx, scheduledKey{}, true)
}

func isScheduled(ctx context.Context) bool {
	v, _ := ctx.Value(scheduledKey{}).(bool)
	return v
}
