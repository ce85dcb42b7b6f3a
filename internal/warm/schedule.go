package warm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/robfig/cron/v3"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/imageref"
)

// RunFunc runs one warm, as Run does with the process's current upstreams
// and settings.
type RunFunc func(ctx context.Context, origin string, req Request, emit func(Event)) error

// Scheduler warms the config's lists (warm.lists) on their cron schedules,
// as the GC and recycle schedulers run theirs. A list still warming when
// its next turn comes skips that turn.
type Scheduler struct {
	cron   *cron.Cron
	run    RunFunc
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewScheduler prepares the lists' schedules; Start starts them.
func NewScheduler(lists []config.WarmList, run RunFunc, log *slog.Logger) (*Scheduler, error) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scheduler{cron: cron.New(cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger))),
		run: run, log: log, ctx: ctx, cancel: cancel}
	for i, l := range lists {
		if _, err := s.cron.AddFunc(l.Schedule, func() { s.Warm(l.From) }); err != nil {
			cancel()
			return nil, fmt.Errorf("warm.lists[%d].schedule: %w", i, err)
		}
	}
	return s, nil
}

// Start starts the schedules.
func (s *Scheduler) Start() { s.cron.Start() }

// Stop stops the schedules, cancels running warms and waits for them.
func (s *Scheduler) Stop() {
	s.cancel()
	<-s.cron.Stop().Done()
	s.wg.Wait()
}

// Warm warms one list file now: a list of references or Kubernetes
// manifests, as imageref.FromFile tells them apart. The file is read at
// each turn, so a job that rewrites it is followed. An invalid reference
// is logged and left out rather than failing the whole list, as an image
// the engine skips is; what failed is logged by image; the summary is
// logged by Run.
func (s *Scheduler) Warm(file string) {
	s.wg.Add(1)
	defer s.wg.Done()
	if s.ctx.Err() != nil {
		return
	}
	f, err := os.Open(file)
	if err != nil {
		s.log.Error("scheduled warm: read the list", "list", file, "err", err)
		return
	}
	images, err := imageref.FromFile(file, f, func(err error) {
		s.log.Warn("scheduled warm: image skipped", "list", file, "reason", err)
	})
	f.Close()
	if err == nil && len(images) == 0 {
		err = fmt.Errorf("no image references in it")
	}
	if err != nil {
		s.log.Error("scheduled warm: read the list", "list", file, "err", err)
		return
	}
	err = s.run(s.ctx, file, Request{Images: images}, func(e Event) {
		switch e.Event {
		case EventSkipped:
			s.log.Warn("scheduled warm: image skipped", "list", file, "image", e.Image, "reason", e.Reason)
		case EventStopped:
			s.log.Warn("scheduled warm: upstream stopped", "list", file, "upstream", e.Upstream, "reason", e.Reason)
		}
	})
	if err != nil {
		s.log.Error("scheduled warm", "list", file, "err", err)
	}
}
