package warm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/metrics"
)

// Upstream is one upstream a warm may route images to.
type Upstream struct {
	Name string
	// Serves reports whether the upstream answers for a registry host,
	// as the node config routes it (config.Upstream.Serves).
	Serves func(registry string) bool
	// Handler is the upstream's client-facing handler: a warm's requests
	// take the way a client's pull takes.
	Handler http.Handler
	// Remaining is the last ratelimit-remaining the upstream sent; ok is
	// false until it sends one.
	Remaining func() (n float64, ok bool)
	// Stored reports whether the upstream's store holds blob d of repo.
	// A client gets a blob's last byte before the cache commits it; a
	// warm says an image is done only once it is kept.
	Stored func(ctx context.Context, repo string, d digest.Digest) (bool, error)
	// Filling reports whether the cache may still be committing a blob;
	// false lets a warm give up on a blob the cache passed through
	// without keeping (no room above disk.min_free) at once rather than
	// after storedWait. Nil: it may always be.
	Filling func() bool
}

// Observer counts what warms do; *metrics.Metrics is one.
type Observer interface {
	WarmImage(upstream, result string)
	WarmBytes(upstream string, n int64)
}

// Options are one warm's upstreams and settings.
type Options struct {
	Upstreams []Upstream
	// Platforms are config warm.platforms, used when a request names none.
	Platforms []string
	// MinRemaining is the rate-limit floor; 0: none.
	MinRemaining int
	// Concurrency is how many images are warmed at a time; 0: 4.
	Concurrency int
	Observer    Observer
	Logger      *slog.Logger
	// Origin says in the log who asked: "api" or the list file.
	Origin string
}

// ProgressInterval is the least time between two progress events of one
// image.
const ProgressInterval = 250 * time.Millisecond

// storedPoll is how often a warm looks whether the cache kept a blob it
// read; storedWait bounds the wait (a bucket upload can take long).
var (
	storedPoll = 20 * time.Millisecond
	storedWait = 10 * time.Minute
)

// StoppedError is the error of the images of an upstream a warm stopped.
const StoppedError = "not warmed: stopped at the rate-limit floor"

// job is one routed image.
type job struct {
	image string
	named reference.Named
	up    *Upstream
}

// run is the state of one warm.
type run struct {
	o         Options
	platforms []platform
	log       *slog.Logger

	emitMu sync.Mutex
	emit   func(Event)

	mu      sync.Mutex
	stopped map[string]bool
	cached  int
	failed  int
	bytes   int64
}

// Run warms req.Images: the plan first, then each image through its
// upstream's handler, at most o.Concurrency at a time, reporting every step
// to emit and ending with a summary. emit is called from one goroutine at a
// time. The error is req's (Check), returned before anything is emitted;
// what goes wrong with an image is its failed event.
func Run(ctx context.Context, o Options, req Request, emit func(Event)) error {
	if err := req.Check(); err != nil {
		return err
	}
	start := time.Now()
	names := req.Platforms
	if len(names) == 0 {
		names = o.Platforms
	}
	if len(names) == 0 {
		names = []string{config.DefaultWarmPlatform}
	}
	r := &run{o: o, emit: emit, stopped: map[string]bool{}, log: o.Logger}
	if r.log == nil {
		r.log = slog.Default()
	}
	for _, n := range names {
		p, err := parsePlatform(n)
		if err != nil {
			// warm.platforms was checked when the config loaded.
			return fmt.Errorf("platform %q: %w", n, err)
		}
		r.platforms = append(r.platforms, p)
	}

	jobs, skipped := r.plan(req.Images)
	if !req.DryRun {
		r.warmAll(ctx, jobs)
	}
	sum := Event{Event: EventSummary, Cached: r.cached, Failed: r.failed, Skipped: skipped,
		Bytes: r.bytes, Seconds: time.Since(start).Seconds()}
	r.send(sum)
	r.log.Info("warm finished", "origin", o.Origin, "dry_run", req.DryRun, "images", len(req.Images),
		"cached", sum.Cached, "failed", sum.Failed, "skipped", sum.Skipped, "bytes", sum.Bytes,
		"duration", time.Since(start).Round(time.Millisecond))
	return nil
}

func (r *run) send(e Event) {
	r.emitMu.Lock()
	defer r.emitMu.Unlock()
	r.emit(e)
}

// plan routes each image to its upstream, in input order.
func (r *run) plan(images []string) (jobs []job, skipped int) {
	for _, image := range images {
		named, err := reference.ParseNormalizedNamed(strings.TrimSpace(image))
		if err != nil {
			skipped++
			r.send(Event{Event: EventSkipped, Image: image, Reason: "invalid reference: " + err.Error()})
			continue
		}
		domain := reference.Domain(named)
		var up *Upstream
		for i := range r.o.Upstreams {
			if r.o.Upstreams[i].Serves(domain) {
				up = &r.o.Upstreams[i]
				break
			}
		}
		if up == nil {
			skipped++
			r.send(Event{Event: EventSkipped, Image: image, Reason: "no upstream serves registry " + domain})
			continue
		}
		r.send(Event{Event: EventPlan, Image: image, Upstream: up.Name})
		jobs = append(jobs, job{image: image, named: reference.TagNameOnly(named), up: up})
	}
	return jobs, skipped
}

// warmAll warms jobs in order, a bounded number at a time. Before each
// image it reads the upstream's rate-limit headroom: below the floor, that
// upstream stops and its remaining images fail without a request.
func (r *run) warmAll(ctx context.Context, jobs []job) {
	n := r.o.Concurrency
	if n <= 0 {
		n = config.DefaultWarmConcurrency
	}
	slots := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, j := range jobs {
		const cancelled = "not warmed: the warm was cancelled"
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			r.fail(j, cancelled, nil)
			continue
		}
		if ctx.Err() != nil {
			<-slots
			r.fail(j, cancelled, nil)
			continue
		}
		if r.stopAt(j.up) {
			<-slots
			r.fail(j, StoppedError, nil)
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			r.warmOne(ctx, j)
		})
	}
	wg.Wait()
}

// stopAt reports whether up's warming is stopped, stopping it, and saying
// so once, when its headroom is below the floor.
func (r *run) stopAt(up *Upstream) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped[up.Name] {
		return true
	}
	if r.o.MinRemaining <= 0 || up.Remaining == nil {
		return false
	}
	left, ok := up.Remaining()
	if !ok || left >= float64(r.o.MinRemaining) {
		return false
	}
	r.stopped[up.Name] = true
	reason := fmt.Sprintf("upstream ratelimit-remaining %.0f is below warm.min_remaining %d", left, r.o.MinRemaining)
	r.log.Warn("warm stopped for an upstream", "upstream", up.Name, "reason", reason)
	r.send(Event{Event: EventStopped, Upstream: up.Name, Reason: reason})
	return true
}

// fail reports an image not (fully) warmed; cause, if any, is logged with
// the details the client does not get.
func (r *run) fail(j job, msg string, cause error) {
	r.mu.Lock()
	r.failed++
	r.mu.Unlock()
	var hp *handlerPanic
	switch {
	case errors.As(cause, &hp) && hp.value != http.ErrAbortHandler:
		r.log.Error("warm: the handler panicked", "image", j.image, "upstream", j.up.Name,
			"panic", fmt.Sprint(hp.value), "stack", string(hp.stack))
	case cause != nil:
		r.log.Warn("warm: image failed", "image", j.image, "upstream", j.up.Name, "err", cause)
	}
	r.observe(j.up.Name, metrics.WarmFailed)
	r.send(Event{Event: EventFailed, Image: j.image, Upstream: j.up.Name, Error: msg})
}

func (r *run) observe(upstream, result string) {
	if r.o.Observer != nil {
		r.o.Observer.WarmImage(upstream, result)
	}
}

// warmOne warms one image: its manifest (an index and the chosen
// platforms' manifests under it), then every blob they name.
func (r *run) warmOne(ctx context.Context, j job) {
	repo := reference.Path(j.named)
	h := j.up.Handler
	var ref string
	var want digest.Digest
	if c, ok := j.named.(reference.Canonical); ok {
		ref, want = c.Digest().String(), c.Digest()
	} else {
		ref = j.named.(reference.Tagged).Tag()
	}
	top, topDigest, mt, err := fetchManifest(ctx, h, repo, ref, want)
	if err != nil {
		r.fail(j, err.Error(), err)
		return
	}
	images := []manifest{top}
	if isIndex(mt, top) {
		images = images[:0]
		for _, d := range r.chosen(top) {
			m, _, cmt, err := fetchManifest(ctx, h, repo, d.Digest.String(), d.Digest)
			if err != nil {
				r.fail(j, err.Error(), err)
				return
			}
			if isIndex(cmt, m) {
				err := fmt.Errorf("manifest %s: an index inside an index is not warmed", d.Digest)
				r.fail(j, err.Error(), err)
				return
			}
			images = append(images, m)
		}
		if len(images) == 0 {
			err := fmt.Errorf("the index has no manifest for %s", r.platformList())
			r.fail(j, err.Error(), err)
			return
		}
	}

	var blobs []descriptor
	seen := map[digest.Digest]bool{}
	var total int64
	for _, m := range images {
		if m.Config == nil {
			err := fmt.Errorf("manifest of %s is not an image manifest (it names no config; Docker schema 1 is not warmed)", j.image)
			r.fail(j, err.Error(), err)
			return
		}
		for _, d := range append([]descriptor{*m.Config}, m.Layers...) {
			if seen[d.Digest] {
				continue
			}
			if d.Digest.Validate() != nil || d.Size < 0 {
				err := fmt.Errorf("manifest names an invalid blob %q", d.Digest)
				r.fail(j, err.Error(), err)
				return
			}
			seen[d.Digest] = true
			blobs = append(blobs, d)
			total += d.Size
		}
	}
	r.send(Event{Event: EventStart, Image: j.image, Upstream: j.up.Name, Total: total})

	var done int64
	last := time.Now()
	progress := func(n int) {
		done += int64(n)
		if now := time.Now(); now.Sub(last) >= ProgressInterval {
			last = now
			r.send(Event{Event: EventProgress, Image: j.image, Bytes: done, Total: total})
		}
	}
	for _, d := range blobs {
		if r.stored(ctx, j.up, repo, d) {
			// Kept already: a HEAD claims it as a pull would, and the
			// bytes stay on disk rather than being read to be dropped.
			progress(int(d.Size))
			r.count(j.up.Name, d.Size)
			continue
		}
		n, err := fetchBlob(ctx, h, repo, d, progress)
		r.count(j.up.Name, n)
		if err != nil {
			r.fail(j, err.Error(), err)
			return
		}
	}
	for _, d := range blobs {
		if err := r.waitStored(ctx, j.up, repo, d.Digest); err != nil {
			r.fail(j, err.Error(), err)
			return
		}
	}
	r.mu.Lock()
	r.cached++
	r.mu.Unlock()
	r.observe(j.up.Name, metrics.WarmCached)
	r.send(Event{Event: EventDone, Image: j.image, Upstream: j.up.Name, Digest: topDigest.String(),
		Bytes: done, Blobs: len(blobs)})
}

func (r *run) count(upstream string, n int64) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	r.bytes += n
	r.mu.Unlock()
	if r.o.Observer != nil {
		r.o.Observer.WarmBytes(upstream, n)
	}
}

// stored reports whether the cache keeps blob d already; a HEAD through
// the handler then claims it from a collection running now.
func (r *run) stored(ctx context.Context, up *Upstream, repo string, d descriptor) bool {
	if up.Stored == nil {
		return false
	}
	if ok, err := up.Stored(ctx, repo, d.Digest); !ok || err != nil {
		return false
	}
	return headBlob(ctx, up.Handler, repo, d)
}

// waitStored waits until the cache has committed blob d it served.
func (r *run) waitStored(ctx context.Context, up *Upstream, repo string, d digest.Digest) error {
	if up.Stored == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, storedWait)
	defer cancel()
	notKept := fmt.Errorf("blob %s: read through the cache, but the cache did not keep it", d)
	for {
		// Filling is read first: a fill that ends between the two calls
		// has committed before Stored looks.
		filling := up.Filling == nil || up.Filling()
		ok, err := up.Stored(ctx, repo, d)
		if ok {
			return nil
		}
		if !filling && err == nil {
			return notKept
		}
		select {
		case <-ctx.Done():
			if err != nil {
				r.log.Warn("warm: look up a stored blob", "upstream", up.Name, "repository", repo, "digest", d, "err", err)
			}
			return notKept
		case <-time.After(storedPoll):
		}
	}
}

// chosen is the index's manifests for the warm's platforms.
func (r *run) chosen(idx manifest) []descriptor {
	var out []descriptor
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			continue
		}
		for _, p := range r.platforms {
			if p.matches(d.Platform.OS, d.Platform.Architecture, d.Platform.Variant) {
				out = append(out, d)
				break
			}
		}
	}
	return out
}

func (r *run) platformList() string {
	s := make([]string, len(r.platforms))
	for i, p := range r.platforms {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// isIndex reports whether a manifest is an index (OCI) or manifest list
// (Docker), by its media type or, without one, its shape.
func isIndex(mt string, m manifest) bool {
	switch mt {
	case mtOCIIndex, mtDockerList:
		return true
	case "":
		return m.Manifests != nil && m.Config == nil
	}
	return false
}
