package serve

// The admin API's backend: what /readyz, /api/v1/status, resolve, purge,
// recycle and gc do with the running upstreams. internal/admin serves the
// HTTP surface and knows nothing of proxies or caches; the backend type
// connects the two. A new admin action is a backend method, in a file of
// its own if it is more than a few lines.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/health"
	"github.com/multiproxy/multiproxy/internal/metrics"
	"github.com/multiproxy/multiproxy/internal/proxy"
)

// backend is the admin API's backend: what /readyz, /api/v1/status,
// resolve, purge, recycle and gc do with the running upstreams. An admin
// action reads the upstreams as they run now from ups, and runs background
// work through sched.
type backend struct {
	log     *slog.Logger
	metrics *metrics.Metrics
	ups     *listeners
	sched   *schedulers
	board   *board
	// clustered: replicas share a bucket, so another replica may be
	// committing a blob a warm waits for.
	clustered bool
}

var _ admin.Backend = (*backend)(nil)

// server finds the upstream an image reference's registry host belongs to.
func (b *backend) server(image string) (*proxy.Server, reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(image))
	if err != nil {
		return nil, nil, &admin.StatusError{Status: http.StatusBadRequest, Err: fmt.Errorf("parse image %q: %w", image, err)}
	}
	domain := reference.Domain(named)
	ups, _ := b.ups.snapshot()
	for _, r := range ups {
		if r.cfg.Serves(domain) {
			return r.server, named, nil
		}
	}
	return nil, nil, &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream configured for registry %q", domain)}
}

// Resolve implements admin.Backend.
func (b *backend) Resolve(ctx context.Context, image string) (admin.Resolution, error) {
	srv, named, err := b.server(image)
	if err != nil {
		return admin.Resolution{}, err
	}
	named = reference.TagNameOnly(named)
	if c, ok := named.(reference.Canonical); ok {
		return admin.Resolution{Image: image, Digest: c.Digest().String(), Pinned: reference.FamiliarString(c)}, nil
	}
	tagged := named.(reference.NamedTagged)
	res, err := srv.Cache().ResolveTag(ctx, reference.Path(named), tagged.Tag())
	if err != nil {
		b.log.Warn("admin resolve failed", "image", image, "err", err)
		return admin.Resolution{}, resolveError(reference.FamiliarString(tagged), err)
	}
	pinned := strings.TrimSpace(image)
	if i := strings.LastIndex(pinned, ":"); i > strings.LastIndex(pinned, "/") {
		pinned = pinned[:i]
	}
	return admin.Resolution{
		Image:  image,
		Digest: res.Digest.String(),
		Pinned: pinned + "@" + res.Digest.String(),
		Stale:  res.Stale,
	}, nil
}

// Purge implements admin.Backend.
func (b *backend) Purge(ctx context.Context, image string) error {
	srv, named, err := b.server(image)
	if err != nil {
		return err
	}
	named = reference.TagNameOnly(named)
	tagged, ok := named.(reference.NamedTagged)
	if !ok {
		return &admin.StatusError{Status: http.StatusBadRequest, Code: admin.CodeUnsupported, Err: errors.New("purge takes a tag, not a digest: digests are immutable")}
	}
	return b.purgeTag(ctx, srv.Cache(), image, tagged)
}

// Ready implements admin.Backend: ready while every upstream listener is
// open and no upstream is degraded by its store (it cannot be written: the
// node needs an operator). Degraded by coordination (Redis down) stays
// ready, saying so in the body. An unreachable upstream does not make the process
// unready, since the cache still serves what it holds; its state is in the
// body for the operator.
func (b *backend) Ready() (bool, any) {
	closed := b.ups.isClosed()
	ready := !closed
	ups, _ := b.ups.snapshot()
	out := make([]readyUpstream, 0, len(ups))
	for _, r := range ups {
		bu := b.board.get(r.name)
		hs := bu.health.Status()
		serving := !closed && bu.listener.serving()
		// Without Redis every replica is degraded at once; taking them
		// all out of the load balancer would turn slower fills into an
		// outage. Only a store that cannot be written makes one unready.
		coordOnly := hs.State == health.Degraded && strings.HasPrefix(hs.Reason, health.OpCoordination)
		ready = ready && serving && (hs.State != health.Degraded || coordOnly)
		out = append(out, readyUpstream{
			Name: r.name, Listen: r.addr, Serving: serving,
			State: hs.State, Since: hs.Since.UTC(), Reason: hs.Reason, LastError: hs.LastError,
		})
	}
	return ready, map[string]any{"ready": ready, "upstreams": out}
}

// Status implements admin.Backend.
func (b *backend) Status(context.Context) (admin.Status, error) {
	ready, _ := b.Ready()
	ups, _ := b.ups.snapshot()
	st := admin.Status{Time: time.Now().UTC(), Ready: ready, Upstreams: make([]admin.UpstreamStatus, 0, len(ups))}
	closed := b.ups.isClosed()
	for _, r := range ups {
		cfg := r.cfg
		bu := b.board.get(r.name)
		hs := bu.health.Status()
		sum := b.metrics.Summary(r.name)
		us := admin.UpstreamStatus{
			Name:               r.name,
			Listen:             r.addr,
			Remote:             cfg.Remote,
			Serving:            !closed && bu.listener.serving(),
			State:              string(hs.State),
			Since:              hs.Since.UTC(),
			Reason:             hs.Reason,
			LastError:          hs.LastError,
			History:            make([]admin.Transition, 0, len(hs.History)),
			HitRatio:           sum.HitRatio(),
			CacheHits:          sum.Hits,
			CacheMisses:        sum.Misses,
			ServedBytes:        admin.ServedBytes{Cache: sum.ServedFromCache, Upstream: sum.ServedFromUpstream},
			FetchedBytes:       sum.FetchedBytes,
			StaleServes:        sum.StaleServes,
			RecycleFailures:    sum.RecycleFailures,
			RateLimited:        sum.RateLimited,
			RateLimitRemaining: sum.RateLimitRemaining,
		}
		if !hs.LastStale.IsZero() {
			t := hs.LastStale.UTC()
			us.LastStale = &t
		}
		for _, t := range hs.History {
			us.History = append(us.History, admin.Transition{From: string(t.From), To: string(t.To), At: t.At.UTC(), Reason: t.Reason})
		}
		if n, at, ok := bu.size.get(); ok {
			at = at.UTC()
			us.StoredBytes, us.StoredAt = &n, &at
		}
		us.PinnedBytes = pinnedStatus(r.server.Cache())
		if g := sum.LastGC; g != nil {
			us.LastGC = &admin.GCRun{At: g.At.UTC(), Result: g.Result, DurationSeconds: g.Duration.Seconds(),
				FreedBytes: g.FreedBytes, FreedObjects: g.FreedObjects}
		}
		if rc := sum.LastRecycle; rc != nil {
			us.LastRecycle = &admin.Recycle{At: rc.At.UTC(), Reason: rc.Reason}
		}
		st.Upstreams = append(st.Upstreams, us)
	}
	return st, nil
}

// Recycle implements admin.Backend. Why a recycle failed goes to the log,
// not to the client.
func (b *backend) Recycle(ctx context.Context, upstream string) error {
	err := b.sched.recycleNow(ctx, upstream)
	if err == nil || clientError(err) {
		return err
	}
	b.log.Error("admin recycle failed; the old App keeps serving", "upstream", upstream, "err", err)
	return &admin.StatusError{Status: http.StatusServiceUnavailable, Code: admin.CodeUnavailable,
		Err: fmt.Errorf("recycle of %s failed; the old App keeps serving and the recycle is retried (the server log has the details)", upstream)}
}

// GC implements admin.Backend. Why a collection failed goes to the log, not
// to the client.
func (b *backend) GC(ctx context.Context, upstream string, dryRun bool) (any, error) {
	res, err := b.sched.collect(ctx, upstream, dryRun)
	if err == nil {
		return res, nil
	}
	if clientError(err) {
		return nil, err
	}
	b.log.Error("admin gc failed", "upstream", upstream, "dry_run", dryRun, "err", err)
	return nil, &admin.StatusError{Status: http.StatusInternalServerError, Code: admin.CodeUnknown,
		Err: fmt.Errorf("garbage collection of %s failed (the server log has the details)", upstream)}
}

// clientError reports an error whose message was written for the admin
// client (an unknown upstream, a bad argument): a 4xx StatusError.
func clientError(err error) bool {
	var se *admin.StatusError
	return errors.As(err, &se) && se.Status >= 400 && se.Status < 500
}

// resolveError answers a failed resolve as a pull of the same tag would be
// answered (proxy.FailureOf, the one table): the status and code, and a
// message without internals.
func resolveError(image string, err error) error {
	f := proxy.FailureOf(err, errcode.ErrorCodeManifestUnknown)
	msg := f.Message
	if f.Status == http.StatusNotFound {
		msg = image + ": " + msg
	}
	return &admin.StatusError{Status: f.Status, Code: f.Code.String(), Err: errors.New(msg)}
}

// purgeTag drops a cached tag (the admin API's purge). A tag that is not
// cached is a 404 MANIFEST_UNKNOWN; any other failure is logged and the
// client told only that it failed.
func (b *backend) purgeTag(ctx context.Context, c *cache.Cache, image string, tagged reference.NamedTagged) error {
	notCached := &admin.StatusError{Status: http.StatusNotFound, Code: admin.CodeManifestUnknown,
		Err: fmt.Errorf("%s is not cached", reference.FamiliarString(tagged))}
	failed := &admin.StatusError{Status: http.StatusInternalServerError, Code: admin.CodeUnknown,
		Err: errors.New("purge failed (the server log has the details)")}
	path, tag := reference.Path(tagged), tagged.Tag()
	// Asked first, so that a tag never cached is a 404 whatever Forget
	// makes of it.
	cached, err := tagCached(ctx, c, path, tag)
	if err != nil {
		b.log.Error("admin purge: look up tag", "image", image, "err", err)
		return failed
	}
	if !cached {
		return notCached
	}
	err = c.Forget(ctx, path, tag)
	var gone storagedriver.PathNotFoundError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &gone):
		return notCached // untagged meanwhile
	}
	b.log.Error("admin purge failed", "image", image, "err", err)
	return failed
}

// tagCached reports whether the store holds tag of repository path.
func tagCached(ctx context.Context, c *cache.Cache, path, tag string) (bool, error) {
	named, err := reference.WithName(path)
	if err != nil {
		return false, err
	}
	repo, err := c.Namespace().Repository(ctx, named)
	if err != nil {
		return false, err
	}
	_, err = repo.Tags(ctx).Get(ctx, tag)
	var unknown distribution.ErrTagUnknown
	var gone storagedriver.PathNotFoundError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &unknown), errors.As(err, &gone):
		return false, nil
	}
	return false, err
}
