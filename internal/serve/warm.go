package serve

// The wiring of cache warming (internal/warm): POST /api/v1/warm and the
// lists warmed on warm.lists' schedules, each run over the upstreams and
// warm settings as they are at its start, so that a reload is followed.

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// Warm implements admin.Warmer.
func (b *backend) Warm(ctx context.Context, req warm.Request, emit func(warm.Event)) error {
	err := b.warm(ctx, "api", req, emit)
	if err != nil {
		// Run refuses only a bad request, before any event.
		return &admin.StatusError{Status: http.StatusBadRequest, Err: err}
	}
	return nil
}

// warm runs one warm over the current upstreams.
func (b *backend) warm(ctx context.Context, origin string, req warm.Request, emit func(warm.Event)) error {
	ups, cfg := b.ups.snapshot()
	o := warm.Options{
		Platforms:    cfg.Warm.Platforms,
		MinRemaining: cfg.Warm.MinRemaining,
		Concurrency:  cfg.Warm.Concurrency,
		Observer:     b.metrics,
		Logger:       b.log,
		Origin:       origin,
	}
	for _, r := range ups {
		o.Upstreams = append(o.Upstreams, warm.Upstream{
			Name:    r.name,
			Serves:  r.cfg.Serves,
			Handler: r.handler,
			Remaining: func() (float64, bool) {
				n := b.metrics.Summary(r.name).RateLimitRemaining
				if n == nil {
					return 0, false
				}
				return *n, true
			},
			Stored: func(ctx context.Context, repo string, d digest.Digest) (bool, error) {
				return blobStored(ctx, r, repo, d)
			},
			// With coordination, another replica may be committing the
			// blob to the shared bucket: only the bounded wait applies.
			Filling: func() bool { return b.clustered || r.server.Cache().FillsInFlight() > 0 },
		})
	}
	return warm.Run(ctx, o, req, emit)
}

// blobStored reports whether upstream r's store holds blob d, linked in
// repo as a pull of it needs.
func blobStored(ctx context.Context, r *running, repo string, d digest.Digest) (bool, error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return false, err
	}
	rep, err := r.server.Cache().Namespace().Repository(ctx, named)
	if err != nil {
		return false, err
	}
	_, err = rep.Blobs(ctx).Stat(ctx, d)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, distribution.ErrBlobUnknown):
		return false, nil
	}
	return false, err
}

// startWarm schedules lists, each run through run. Lists equal to the
// running ones keep their schedules, so that a SIGHUP does not cancel a
// nightly warm midway; changed lists replace them.
func (s *schedulers) startWarm(lists []config.WarmList, run warm.RunFunc) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warm != nil {
		if slices.Equal(s.warmLists, lists) {
			return nil
		}
		s.warm.Stop()
		s.warm, s.warmLists = nil, nil
	}
	if len(lists) == 0 {
		return nil
	}
	sched, err := warm.NewScheduler(lists, run, s.log)
	if err != nil {
		return err
	}
	s.warm, s.warmLists = sched, slices.Clone(lists)
	sched.Start()
	return nil
}

// stopWarm stops the schedules, and the scheduled warms running, when the
// process shuts down; a reload leaves them to startWarm.
func (s *schedulers) stopWarm() {
	s.mu.Lock()
	sched := s.warm
	s.warm, s.warmLists = nil, nil
	s.mu.Unlock()
	if sched != nil {
		sched.Stop()
	}
}

var _ admin.Warmer = (*backend)(nil)
