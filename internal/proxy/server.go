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
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/storage"
	"github.com/multiproxy/multiproxy/internal/upstream"
	"github.com/multiproxy/multiproxy/internal/version"
)

// Observer is told about every client request, for metrics.
type Observer interface {
	cache.Observer
	Request(kind string, status int, d time.Duration, fromCache bool, bytes int64)
	Upstream(method string, status int, d time.Duration, h http.Header, err error)
	UpstreamRedirect()
	UpstreamRefused(reason string)
}

type nopObserver struct{}

func (nopObserver) Hit(string)                                              {}
func (nopObserver) Miss(string)                                             {}
func (nopObserver) Stale(string)                                            {}
func (nopObserver) DedupJoin(string)                                        {}
func (nopObserver) UpstreamBytes(int64)                                     {}
func (nopObserver) Request(string, int, time.Duration, bool, int64)         {}
func (nopObserver) Upstream(string, int, time.Duration, http.Header, error) {}
func (nopObserver) UpstreamRedirect()                                       {}
func (nopObserver) UpstreamRefused(string)                                  {}
func (nopObserver) FillUncached(string)                                     {}
func (nopObserver) StorageError(string)                                     {}
func (nopObserver) FillUncoordinated()                                      {}
func (nopObserver) FillSource(string)                                       {}
func (nopObserver) BadContent(string)                                       {}

// Options configures a Server beyond its upstream config.
type Options struct {
	Logger   *slog.Logger
	Observer Observer
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
	obs   Observer
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
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	log := o.Logger.With("upstream", u.Name)
	s := &Server{cfg: u, log: log, obs: o.Observer, drain: o.Drain}
	up, err := upstream.New(upstream.Options{
		Name:       u.Name,
		Remote:     u.Remote,
		Username:   u.Username,
		Password:   u.Password.Reveal(),
		CAFile:     u.CAFile,
		Timeout:    u.Timeout,
		UserAgent:  version.UserAgent(),
		Observe:    o.Observer.Upstream,
		Redirected: o.Observer.UpstreamRedirect,
		AllowHops:  u.HopPrefixes(),
		Refused: func(host, reason string) {
			// The host only: a hop's URL may carry a signature.
			log.Warn("upstream hop refused", "host", host, "reason", reason)
			o.Observer.UpstreamRefused(reason)
		},
	})
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
	rt := parseRoute(r.URL.Path)
	defer func() {
		d := time.Since(start)
		// Only content counts as served: an error body is not traffic
		// anyone pulled.
		content := rw.bytes
		if rw.status >= 300 {
			content = 0
		}
		s.obs.Request(rt.kind, rw.status, d, !rw.fromUpstream, content)
		attrs := []any{"method", r.Method, "repository", rt.repo, "kind", rt.kind,
			"ref", rt.ref, "status", rw.status, "bytes", rw.bytes, "duration", d, "stale", rw.stale}
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
	if rt.repo != "" {
		if _, err := reference.WithName(rt.repo); err != nil || !repoPattern.MatchString(rt.repo) {
			writeError(rw, http.StatusBadRequest, codeNameInvalid, "invalid repository name")
			return
		}
	}
	switch rt.kind {
	case kindManifest:
		s.serveManifest(rw, r, rt)
	case kindBlob:
		s.serveBlob(rw, r, rt)
	case kindTags:
		s.serveTags(rw, r, rt)
	case kindRefs:
		s.serveReferrers(rw, r, rt)
	case kindUpload:
		writeError(rw, http.StatusMethodNotAllowed, codeUnsupported, "multiproxy is a read-only pull-through cache")
	default:
		s.apps.serve(rw, r)
	}
}

// serveReferrers answers the OCI referrers API (signatures, attestations)
// from the upstream's API or tag schema, stale when the upstream fails.
func (s *Server) serveReferrers(w *recorder, r *http.Request, rt route) {
	d, err := digest.Parse(rt.ref)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return
	}
	refs, err := s.cache.Referrers(r.Context(), rt.repo, d, r.URL.Query().Get("artifactType"))
	if err != nil {
		s.writeUpstreamError(w, r, err, kindManifest)
		return
	}
	if refs.Filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeListing(w, r, "application/vnd.oci.image.index.v1+json", refs.Body, refs.Stale, refs.Cause)
}

// writeListing answers with a list made by the cache (tags, referrers),
// marked stale when the upstream could not confirm it.
func writeListing(w *recorder, r *http.Request, mediaType string, body []byte, stale bool, cause upstream.Cause) {
	h := w.Header()
	if stale {
		w.stale = true
		h.Set("Warning", fmt.Sprintf(`110 multiproxy "Response is Stale: upstream %s"`, cause))
	}
	h.Set("Content-Type", mediaType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// serveTags passes a tag list through from the upstream, or from the cached
// tags, marked stale, when the upstream fails.
func (s *Server) serveTags(w *recorder, r *http.Request, rt route) {
	q := r.URL.Query()
	if n := q.Get("n"); n != "" {
		// Checked here as distribution checks it: passed on, a bad n gets
		// the upstream's 400, which the cache would take for a failing
		// upstream and answer with its cached tags instead.
		parsed, err := strconv.Atoi(n)
		if err != nil || parsed < 0 {
			writeRegistryError(w, errcode.ErrorCodePaginationNumberInvalid.WithDetail(map[string]int{"n": parsed}))
			return
		}
	}
	// ns names this cache's upstream to this cache; the upstream has no
	// use for it. The next page's link keeps it: in one-port mode it is
	// how the following request finds this upstream again.
	ns := q.Get("ns")
	q.Del("ns")
	list, err := s.cache.ListTags(r.Context(), rt.repo, q.Encode())
	if err != nil {
		s.writeUpstreamError(w, r, err, kindTags)
		return
	}
	w.fromUpstream = !list.Stale
	if list.Next != "" {
		next := list.Next
		if ns != "" {
			v, _ := url.ParseQuery(next) // encoded by the cache from parsed values
			v.Set("ns", ns)
			next = v.Encode()
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next))
	}
	writeListing(w, r, "application/json", list.Body, list.Stale, list.Cause)
}

func (s *Server) serveManifest(w *recorder, r *http.Request, rt route) {
	ctx := r.Context()
	// From the lookup to the store's read, a collection must not remove the
	// manifest it resolved to.
	release := s.cache.Hold()
	defer release()
	var mem *cache.Manifest
	d, err := digest.Parse(rt.ref)
	byTag := err != nil
	if byTag {
		if !tagPattern.MatchString(rt.ref) {
			if looksLikeDigest(rt.ref) {
				writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
			} else {
				writeError(w, http.StatusBadRequest, codeTagInvalid, "invalid tag")
			}
			return
		}
		res, err := s.cache.ResolveTag(ctx, rt.repo, rt.ref)
		if err != nil {
			s.writeUpstreamError(w, r, err, kindManifest)
			return
		}
		w.tagRule = res.Rule
		if res.Stale {
			w.stale = true
			w.Header().Set("Warning", fmt.Sprintf(`110 multiproxy "Response is Stale: upstream %s"`, res.Cause))
		}
		d, mem = res.Digest, res.Manifest
	} else if mem, err = s.cache.EnsureManifest(ctx, rt.repo, d); err != nil {
		s.writeUpstreamError(w, r, err, kindManifest)
		return
	}
	if mem == nil {
		// Read here, not through the App: what the request may be given
		// depends on the stored manifest's type (answerManifest), and an
		// App's 404 could not tell a manifest the client does not accept
		// from one the store lost.
		if mem, err = s.readManifest(r, rt.repo, d); err != nil {
			s.writeUpstreamError(w, r, err, kindManifest)
			return
		}
	}
	s.answerManifest(w, r, rt.repo, d, mem, byTag)
}

// serveManifestBytes answers with verified manifest bytes, from the store
// or from memory, with the headers distribution's manifest handler sets.
func serveManifestBytes(w http.ResponseWriter, r *http.Request, d digest.Digest, m *cache.Manifest) {
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.Body)
	}
}

func looksLikeDigest(ref string) bool {
	for _, c := range ref {
		if c == ':' {
			return true
		}
	}
	return false
}

func (s *Server) serveBlob(w *recorder, r *http.Request, rt route) {
	ctx := r.Context()
	d, err := digest.Parse(rt.ref)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return
	}
	if r.Method == http.MethodHead {
		// A HEAD asks whether the blob exists and how big it is: the store
		// or one upstream HEAD answers that, never a download.
		size, err := s.cache.BlobSize(ctx, rt.repo, d)
		if err != nil {
			s.writeUpstreamError(w, r, err, kindBlob)
			return
		}
		setBlobHeaders(w.Header(), d)
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		return
	}
	if u, ok := s.cache.RedirectURL(r, rt.repo, d); ok {
		// storage.s3.redirect: the bucket sends the bytes, presigned
		// for this one blob; containerd and skopeo follow a 307.
		w.Header().Set("Docker-Content-Digest", d.String())
		http.Redirect(w, r, u, http.StatusTemporaryRedirect)
		return
	}
	b, err := s.cache.Blob(ctx, rt.repo, d)
	if err != nil {
		s.writeUpstreamError(w, r, err, kindBlob)
		return
	}
	defer b.Close()
	g := newStallGuard(w)
	if b.File != nil {
		// Straight from the file, with the headers distribution's
		// ServeBlob sets, so the kernel can copy it (sendfile) and ranges
		// work. Measured on loopback, sendfile halves the CPU per byte at
		// 16 clients for the same throughput, though one stream alone
		// runs a little slower than a user-space copy (1.85 against
		// 2.4 GB/s), far above any NIC.
		setBlobHeaders(w.Header(), d)
		w.Header().Set("Cache-Control", "max-age=31536000")
		http.ServeContent(g, r, "", time.Time{}, b.File)
		s.dropIfStalled(g, rt, d)
		g.finish()
		return
	}
	st := b.Stream
	if r.Header.Get("Range") != "" && ifRangeHolds(r, d) {
		s.serveColdRange(w, g, r, rt, d, st)
		return
	}
	// The status goes out only with the first byte: a fill that fails
	// before it (the upstream stalls after its headers, a CDN refuses)
	// still gets a clean error status instead of a 200 cut short.
	buf := make([]byte, 256<<10)
	n, err := st.Read(buf)
	if err != nil && !(err == io.EOF && n == 0 && st.Size() == 0) {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.writeUpstreamError(w, r, err, kindBlob)
		return
	}
	w.fromUpstream = true
	setBlobHeaders(w.Header(), d)
	if st.Size() >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	}
	w.WriteHeader(http.StatusOK)
	if n > 0 {
		if _, err := g.Write(buf[:n]); err != nil {
			s.dropIfStalled(g, rt, d)
			panic(http.ErrAbortHandler)
		}
	}
	if _, err := st.WriteTo(g); err != nil {
		s.dropIfStalled(g, rt, d)
		if ctx.Err() == nil {
			s.log.Warn("blob stream aborted", "repository", rt.repo, "digest", d, "err", err)
		}
		// Abort the connection: a clean end would let the client take a
		// short or unverified body for the blob.
		panic(http.ErrAbortHandler)
	}
	g.finish()
}

// dropIfStalled closes the connection of a client that stopped reading a
// blob: its stream is closed on the way out, so a fill paced to it goes on
// for the others.
func (s *Server) dropIfStalled(g *stallGuard, rt route, d digest.Digest) {
	if g.stalled == nil {
		return
	}
	g.cause = fmt.Errorf("client stalled: no progress for %v: %w", g.timeout, g.stalled)
	s.log.Warn("client stopped reading a blob; dropped", "repository", rt.repo, "digest", d,
		"sent", g.bytes, "stall_timeout", g.timeout)
	panic(http.ErrAbortHandler)
}

func setBlobHeaders(h http.Header, d digest.Digest) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
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

// ReadFrom keeps sendfile available to distribution's blob serving.
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
