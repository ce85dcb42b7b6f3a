// Package proxy serves one upstream's OCI distribution API to clients: a
// read-only guard, the cache's decisions (internal/cache), and an embedded
// distribution App that serves what is in the local store.
//
// One request's way through:
//
//	client -> Server.ServeHTTP: read-only guard, path and reference checks
//	       -> cache: revalidate a tag, or fill a missing manifest or blob
//	       -> the local store, read here (manifests, blobs) or by the
//	          embedded distribution App (the catalog, the API base)
//
// A manifest is read from the store here, once the cache has resolved a tag
// to its digest, and answered by distribution's content negotiation rules
// (negotiate.go): the App never asks the upstream about tags itself, and a
// manifest type the client does not accept is never taken for a lost
// manifest. A blob that is not yet local is streamed from the cache's
// shared fill.
package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/storage"
	"github.com/multiproxy/multiproxy/internal/upstream"
	"github.com/multiproxy/multiproxy/internal/version"
)

// Observer is told, for metrics, about every client request, every call
// to the upstream, and (as cache.Observer) the cache's decisions.
// metrics.Upstream implements it.
type Observer interface {
	cache.Observer
	Request(kind string, status int, d time.Duration, fromCache bool, bytes int64)
	Upstream(method string, status int, d time.Duration, h http.Header, err error)
	UpstreamRedirect()
	UpstreamRefused(reason string)
}

// Health is told what shows the upstream's health: the status of each of
// its answers and, as cache.Health, stale serves and bad content.
// health.Upstream implements it.
type Health interface {
	cache.Health
	Observe(status int, err error)
}

// Options configures a Server beyond its upstream config.
type Options struct {
	Logger *slog.Logger
	// Observer, if set, is told what the metrics count.
	Observer Observer
	// Health, if set, is told what the upstream's health is judged by.
	Health Health
	// Drain bounds how long a replaced App may finish its requests.
	Drain time.Duration
	// Guard is told what the cache relies on, for online GC.
	Guard cache.Guard
	// Space accounts for the free space of the storage's filesystem.
	Space *disk.Space
	// Coord, with a bucket, has one replica of the cluster fetch each blob.
	Coord cache.Coordinator
	// PeerToken is sent to the other replicas' peer ports.
	PeerToken string
	// RecordPull is told of manifest pulls, for the cluster's eviction.
	RecordPull func(repo string, d digest.Digest, t time.Time)
	// MakeRoom evicts from the upstream's store until n more bytes are free.
	MakeRoom func(ctx context.Context, n int64) error
	// StoreRecreated is called when the cache recreates its store's
	// directories, deleted under the running process.
	StoreRecreated func()
	// Reuse, when set, is the server this one replaces (a reload changed
	// the upstream's settings): the new server shares its cache, so fills
	// running there finish and commit. TakeOver completes the handover.
	Reuse *Server
}

// Server is the HTTP handler of one upstream.
type Server struct {
	cfg   config.Upstream
	up    *upstream.Client
	cache *cache.Cache
	apps  appSlot
	log   *slog.Logger
	obs   Observer // nil: no metrics
	drain time.Duration
	ctx   context.Context // parent of the Apps; cancelled by Close

	ownsCache atomic.Bool // closing the server closes the cache's fills
	swapMu    sync.Mutex  // one App build-and-swap at a time
	closed    bool        // under swapMu
	stop      context.CancelFunc
	wg        sync.WaitGroup
	once      sync.Once
}

// New builds the server for one upstream. It does not contact the upstream:
// one that is down serves what is cached and answers the rest with 503 until
// it is back, and health reports it meanwhile.
func New(ctx context.Context, u config.Upstream, o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Drain <= 0 {
		o.Drain = 30 * time.Second
	}
	log := o.Logger.With("upstream", u.Name)
	s := &Server{cfg: u, log: log, obs: o.Observer, drain: o.Drain}
	uo := upstream.Options{
		Name:      u.Name,
		Remote:    u.Remote,
		Username:  u.Username,
		Password:  u.Password.Reveal(),
		CAFile:    u.CAFile,
		Timeout:   u.Timeout,
		UserAgent: version.UserAgent(),
		AllowHops: u.HopPrefixes(),
		Refused: func(host, reason string) {
			// The host only: a hop's URL may carry a signature.
			log.Warn("upstream hop refused", "host", host, "reason", reason)
			if o.Observer != nil {
				o.Observer.UpstreamRefused(reason)
			}
		},
	}
	if o.Observer != nil || o.Health != nil {
		uo.Observe = func(method string, status int, d time.Duration, h http.Header, err error) {
			if o.Observer != nil {
				o.Observer.Upstream(method, status, d, h, err)
			}
			if o.Health != nil {
				o.Health.Observe(status, err)
			}
		}
	}
	if o.Observer != nil {
		uo.Redirected = o.Observer.UpstreamRedirect
	}
	up, err := upstream.New(uo)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	s.up = up
	if o.Reuse != nil {
		s.cache = o.Reuse.cache
	} else {
		driver, err := storage.Driver(ctx, u.Storage)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		var shared *cache.Shared
		if u.Storage.S3.Enabled() {
			shared = &cache.Shared{
				Name:      u.Name,
				TierDir:   u.Storage.LocalCache.Dir,
				TierMax:   int64(u.Storage.LocalCache.MaxSize),
				Redirect:  u.Storage.S3.Redirect,
				Coord:     o.Coord,
				PeerToken: o.PeerToken,
			}
		}
		s.cache, err = cache.New(ctx, cache.Options{
			Driver:       driver,
			Shared:       shared,
			RecordPull:   o.RecordPull,
			Root:         u.Storage.Path,
			Upstream:     up,
			TagFreshness: u.TagFreshness,
			TagRules:     tagRules(u.TagRules),
			Pins:         u.Pins,
			FillTimeout:  u.FillTimeout,
			MinFree:      u.MinFree(),
			Logger:       log,
			Observer:     o.Observer,
			Health:       o.Health,
			Guard:        o.Guard,
			Space:        o.Space,
			MakeRoom:     o.MakeRoom,
			Recreated:    o.StoreRecreated,
		})
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		s.ownsCache.Store(true)
	}
	s.ctx, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	s.apps.cur = &appHandle{app: buildApp(s.ctx, u.Name, u.Storage)}
	return s, nil
}

// TakeOver completes a handover from the server this one was built to
// replace (Options.Reuse): the shared cache switches to this server's
// upstream client and settings, and closing the old server no longer ends
// its fills. Fills already running finish with the client they started with.
func (s *Server) TakeOver(old *Server) {
	s.cache.Update(cache.Options{
		Upstream:     s.up,
		TagFreshness: s.cfg.TagFreshness,
		TagRules:     tagRules(s.cfg.TagRules),
		Pins:         s.cfg.Pins,
		FillTimeout:  s.cfg.FillTimeout,
		MinFree:      s.cfg.MinFree(),
	})
	old.ownsCache.Store(false)
	s.ownsCache.Store(true)
}

// Name is the upstream's name.
func (s *Server) Name() string { return s.cfg.Name }

// Cache is the upstream's cache, for admin actions.
func (s *Server) Cache() *cache.Cache { return s.cache }

// Upstream is the upstream's client, for health probes.
func (s *Server) Upstream() *upstream.Client { return s.up }

// Close stops background work and shuts the App down, once. Call it after the
// HTTP server has drained.
func (s *Server) Close() {
	s.once.Do(func() {
		s.stop()
		s.swapMu.Lock() // no recycle may install an App after this
		s.closed = true
		s.swapMu.Unlock()
		s.wg.Wait()
		s.apps.current().shutdown(s.drain)
		if s.ownsCache.Load() {
			s.cache.Close()
		}
		s.up.Close()
	})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &recorder{ResponseWriter: w, status: http.StatusOK}
	route := parseRoute(r.URL.Path)
	defer func() {
		d := time.Since(start)
		// Only content counts as served: an error body is not traffic
		// anyone pulled.
		content := rw.bytes
		if rw.status >= 300 {
			content = 0
		}
		if s.obs != nil {
			s.obs.Request(route.kind, rw.status, d, !rw.fromUpstream, content)
		}
		attrs := []any{"method", r.Method, "repository", route.repo, "kind", route.kind,
			"ref", route.ref, "status", rw.status, "bytes", rw.bytes, "duration", d, "stale", rw.stale}
		if rw.tagRule != "" {
			attrs = append(attrs, "tag_rule", rw.tagRule)
		}
		if rw.cause != nil {
			// The whole story for the operator; the client got a code.
			attrs = append(attrs, "cause", rw.cause.Error())
		}
		s.log.Info("request", attrs...)
	}()

	// containerd names the registry a mirror request is for in ?ns=. A port
	// answers only for its own upstream: a ghcr.io pull sent to the Docker
	// Hub port by a wildcard mirror gets 404, and containerd falls back to
	// the right server instead of pulling a same-named image from the wrong
	// registry. ns is a lookup key, never a host to dial.
	if ns := r.URL.Query().Get("ns"); ns != "" && !s.cfg.Serves(ns) {
		writeError(rw, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("this port serves %s, not %s", s.cfg.Name, ns))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rw.Header().Set("Allow", "GET, HEAD")
		writeError(rw, http.StatusMethodNotAllowed, codeUnsupported, "multiproxy is a read-only pull-through cache")
		return
	}
	if route.repo != "" {
		if _, err := reference.WithName(route.repo); err != nil || !repoPattern.MatchString(route.repo) {
			writeError(rw, http.StatusBadRequest, codeNameInvalid, "invalid repository name")
			return
		}
	}
	switch route.kind {
	case kindManifest:
		s.serveManifest(rw, r, route)
	case kindBlob:
		s.serveBlob(rw, r, route)
	case kindTags:
		s.serveTags(rw, r, route)
	case kindRefs:
		s.serveReferrers(rw, r, route)
	case kindUpload:
		writeError(rw, http.StatusMethodNotAllowed, codeUnsupported, "multiproxy is a read-only pull-through cache")
	default:
		s.apps.serve(rw, r)
	}
}

// writeUpstreamError answers a failed request as FailureOf says, and notes
// the cause for the access log.
func (s *Server) writeUpstreamError(w *recorder, r *http.Request, err error, kind string) {
	w.cause = err
	if r.Context().Err() != nil {
		// The client went away; nobody reads this answer. Only the
		// client's own context says so: a cancellation inside the upstream
		// call (a missed deadline) is an upstream failure with a status.
		w.status = 499
		return
	}
	notFound := codeManifestUnknown
	switch kind {
	case kindBlob:
		notFound = codeBlobUnknown
	case kindTags:
		notFound = codeNameUnknown
	}
	f := FailureOf(err, notFound)
	if f.Status >= 500 && f.Code == codeUnknown {
		s.log.Error("request failed", "err", err)
	}
	for k, v := range f.Header {
		w.Header()[k] = v
	}
	writeError(w, f.Status, f.Code, f.Message)
}

// recorder notes what was answered, for the access log and metrics.
type recorder struct {
	http.ResponseWriter
	status       int
	bytes        int64
	wrote        bool
	stale        bool
	tagRule      string // the tag rule that set a resolved tag's freshness
	fromUpstream bool
	cause        error // why an error was answered, for the access log
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// ReadFrom keeps sendfile available to the blobs served here from a file
// or a fill's spool (through stallGuard).
func (r *recorder) ReadFrom(src io.Reader) (int64, error) {
	r.wrote = true
	n, err := io.Copy(r.ResponseWriter, src)
	r.bytes += n
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
