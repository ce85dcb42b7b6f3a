// Package metrics owns multiproxy's Prometheus collectors. Everything else
// reports through the small methods of Upstream; only this package touches
// the Prometheus API. Every metric is prefixed multiproxy_ and labelled with
// the upstream's name; no label ever carries a repository or digest, so
// cardinality stays bounded by the config.
//
// Counters whose label values come from a fixed set (cache kinds, stale
// causes, GC results, recycle and eviction reasons) are created at zero for
// every value when an upstream is first reported on, so that rate() and
// increase() see the first event instead of a series appearing from nowhere.
// Values outside those sets are folded into "other" for the same reason a
// repository label is refused: a caller's typo must not mint new series.
package metrics

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/health"
	"github.com/multiproxy/multiproxy/internal/recycle"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Results of a GC run, as labelled on multiproxy_gc_runs_total.
const (
	GCSuccess = "success"
	GCFailure = "failure"
)

// Results of one image's warm, as labelled on multiproxy_warm_images_total.
const (
	WarmCached = "cached"
	WarmFailed = "failed"
)

var warmResults = []string{WarmCached, WarmFailed}

// other replaces a label value outside its fixed set.
const other = "other"

var (
	kinds          = []string{cache.KindTag, cache.KindManifest, cache.KindBlob}
	sources        = []string{"cache", "upstream"}
	recycleReasons = []string{recycle.ReasonInterval, recycle.ReasonMemory, recycle.ReasonAdmin, recycle.ReasonRetry, other}
	gcResults      = []string{GCSuccess, GCFailure}
	// As internal/cache names them.
	uncachedReasons = []string{cache.UncachedNoSpace, cache.UncachedStorageError}
	storageOps      = []string{cache.OpSpool, cache.OpCommit, cache.OpManifest}
	fillSources     = []string{cache.SourceUpstream, cache.SourceBucket, cache.SourcePeer}
	badContentKinds = []string{cache.KindManifest, cache.KindBlob, cache.KindTag, cache.KindReferrers}
	// As internal/gc names them.
	evictReasons = []string{"max_size", "max_unused", other}
	// Every cause a revalidation can fail with; not_found never serves
	// stale (a 404 is the upstream's authoritative answer).
	staleCauses = []string{
		string(upstream.CauseUnreachable), string(upstream.CauseTimeout), string(upstream.CauseRateLimited),
		string(upstream.CauseAuth), string(upstream.CauseServerError), string(upstream.CauseBadContent),
		string(upstream.CauseOther),
	}
)

// Metrics is one process's collectors, on a registry of its own (never the
// global default one, which distribution's packages also touch).
type Metrics struct {
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	inflight        *prometheus.GaugeVec
	hits            *prometheus.CounterVec
	misses          *prometheus.CounterVec
	servedBytes     *prometheus.CounterVec
	fetchedBytes    *prometheus.CounterVec
	upRequests      *prometheus.CounterVec
	upDuration      *prometheus.HistogramVec
	redirects       *prometheus.CounterVec
	refused         *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	badContent      *prometheus.CounterVec
	rateLimitRemain *prometheus.GaugeVec
	stale           *prometheus.CounterVec
	dedupWaiters    *prometheus.CounterVec
	fillUncached    *prometheus.CounterVec
	storageErrors   *prometheus.CounterVec
	uncoordinated   *prometheus.CounterVec
	takeovers       *prometheus.CounterVec
	fillSources     *prometheus.CounterVec
	coordUp         *prometheus.GaugeVec
	gcLeader        *prometheus.GaugeVec
	state           *prometheus.GaugeVec
	stored          *storedBytes
	fills           *storedBytes // same shape: a gauge read from funcs
	localCopies     *storedBytes
	pinned          *storedBytes
	disk            *diskBytes
	recycles        *prometheus.CounterVec
	recycleFailures *prometheus.CounterVec
	lastRecycle     *prometheus.GaugeVec
	gcRuns          *prometheus.CounterVec
	gcDuration      *prometheus.HistogramVec
	gcFreedBytes    *prometheus.CounterVec
	gcFreedObjects  *prometheus.CounterVec
	evictions       *prometheus.CounterVec
	lastGC          *prometheus.GaugeVec
	warmImages      *prometheus.CounterVec
	warmBytes       *prometheus.CounterVec

	// last keeps the details of the latest GC and recycle per upstream for
	// the status API; Prometheus only has room for their timestamps.
	mu   sync.Mutex
	last map[string]*lastEvents
}

type lastEvents struct {
	gc      *GCRun
	recycle *Recycle
}

// New registers the collectors on a fresh registry.
func New() *Metrics {
	const ns = "multiproxy"
	m := &Metrics{Registry: prometheus.NewRegistry(), last: map[string]*lastEvents{}}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
		Help: "Client requests answered, by kind (manifest, blob, tags, base, other) and HTTP status code."},
		[]string{"upstream", "kind", "code"})
	m.requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
		Help: "Time to answer a client request, to the last byte.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)},
		[]string{"upstream", "kind"})
	m.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "inflight_requests",
		Help: "Client requests being answered now."}, []string{"upstream"})
	m.hits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cache_hits_total",
		Help: "Lookups answered from the local store, by kind (tag, manifest, blob)."}, []string{"upstream", "kind"})
	m.misses = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cache_misses_total",
		Help: "Lookups that had to fetch from the upstream, by kind (tag, manifest, blob)."}, []string{"upstream", "kind"})
	m.servedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "served_bytes_total",
		Help: "Response body bytes sent to clients, by source (cache or upstream)."}, []string{"upstream", "source"})
	m.fetchedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_fetched_bytes_total",
		Help: "Manifest and blob bytes downloaded from the upstream."}, []string{"upstream"})
	m.upRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_requests_total",
		Help: "Requests sent to the upstream (including auth and health probes), by method and status code (0: no answer)."},
		[]string{"upstream", "method", "code"})
	m.upDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_request_duration_seconds",
		Help: "Upstream time to response headers.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)},
		[]string{"upstream", "method"})
	m.redirects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_redirects_total",
		Help: "Redirects followed on upstream calls (blobs sent to a CDN or object store, a redirected API)."}, []string{"upstream"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_refused_total",
		Help: "Upstream hops (redirect targets, token realms) not dialed, by reason: an address the hop policy refuses (link_local, loopback, private, ...) or a downgrade from https to http."},
		[]string{"upstream", "reason"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_rate_limited_total",
		Help: "Upstream answers with status 429."}, []string{"upstream"})
	m.badContent = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_bad_content_total",
		Help: "Upstream answers not valid for their endpoint (a digest mismatch, a manifest distribution refuses, a tag list or referrers index that is none), by kind (manifest, blob, tag, referrers); the client got a 502 or a stale answer."},
		[]string{"upstream", "kind"})
	m.rateLimitRemain = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_ratelimit_remaining",
		Help: "Last ratelimit-remaining value the upstream sent (Docker Hub)."}, []string{"upstream"})
	m.stale = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "stale_serves_total",
		Help: "Tags served from the cache because the upstream could not revalidate them, by cause."},
		[]string{"upstream", "cause"})
	m.dedupWaiters = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dedup_waiters_total",
		Help: "Requests joined to a fetch already in flight instead of starting their own, by kind."},
		[]string{"upstream", "kind"})
	m.fillUncached = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "fill_uncached_total",
		Help: "Blob fills streamed to clients without being stored, by reason (no_space: it would not fit above disk.min_free even after eviction; storage_error: the store could not be written)."},
		[]string{"upstream", "reason"})
	m.storageErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "storage_errors_total",
		Help: "Failed writes to the upstream's store, by operation (spool, commit, manifest)."},
		[]string{"upstream", "op"})
	m.uncoordinated = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "fills_uncoordinated_total",
		Help: "Blob fills from the upstream made without the cluster's fill lease (Redis unavailable, or its holder silent): other replicas may have fetched the same blob."},
		[]string{"upstream"})
	m.takeovers = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "fill_takeovers_total",
		Help: "Blob fill leases this replica revoked because their holder's peer port refused connections (its process gone), so the fill was taken over at once rather than after coordination.lease_ttl."},
		[]string{"upstream"})
	m.fillSources = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "fill_sources_total",
		Help: "Blob fills by where they read from: upstream, bucket (the shared store) or peer (another replica's running fill)."},
		[]string{"upstream", "source"})
	m.coordUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "coordination_up",
		Help: "1 while Redis (coordination.redis) answers this replica, 0 while it fills alone; absent without coordination."},
		[]string{"upstream"})
	m.gcLeader = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "gc_leader",
		Help: "1 while this replica holds the cluster's garbage collection lease and collects the upstream, else 0."},
		[]string{"upstream"})
	m.state = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_state",
		Help: "1 for the upstream's current state (unknown, reachable, stale, down, degraded), 0 for the others."},
		[]string{"upstream", "state"})
	m.localCopies = &storedBytes{desc: prometheus.NewDesc(ns+"_local_cache_bytes",
		"Bytes of local copies of blobs kept by a replica on a shared bucket (storage.local_cache); absent on the filesystem.",
		[]string{"upstream"}, nil), funcs: map[string]func() (int64, bool){}}
	m.fills = &storedBytes{desc: prometheus.NewDesc(ns+"_fills_in_flight",
		"Blob downloads running now, including those whose clients are served and whose bytes are being committed.",
		[]string{"upstream"}, nil), funcs: map[string]func() (int64, bool){}}
	m.stored = &storedBytes{desc: prometheus.NewDesc(ns+"_stored_bytes",
		"Bytes in the upstream's storage directory, from a walk at most 30 s old.", []string{"upstream"}, nil),
		funcs: map[string]func() (int64, bool){}}
	m.pinned = newPinned(ns)
	m.disk = &diskBytes{
		size: prometheus.NewDesc(ns+"_disk_size_bytes",
			"Size of the filesystem holding the upstream's storage (statfs), read at scrape time.",
			[]string{"upstream"}, nil),
		free: prometheus.NewDesc(ns+"_disk_free_bytes",
			"Bytes free to an unprivileged writer on the filesystem holding the upstream's storage (statfs), read at scrape time.",
			[]string{"upstream"}, nil),
		reserved: prometheus.NewDesc(ns+"_disk_reserved_bytes",
			"Bytes reserved on that filesystem by blob fills still writing; upstreams sharing a filesystem share the figure.",
			[]string{"upstream"}, nil),
		minFree: prometheus.NewDesc(ns+"_disk_min_free_bytes",
			"The upstream's low watermark (disk.min_free) in bytes on that filesystem: a fill is stored only if free less reserved bytes stay above it.",
			[]string{"upstream"}, nil),
		funcs: map[string]func() (Disk, bool){}}
	m.recycles = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "recycles_total",
		Help: "Embedded App recycles completed, by reason (interval, memory, admin, retry)."}, []string{"upstream", "reason"})
	m.recycleFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "recycle_failures_total",
		Help: "Recycles that could not build a new App; the old one kept serving."}, []string{"upstream"})
	m.lastRecycle = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "last_recycle_timestamp_seconds",
		Help: "Unix time of the last completed recycle; absent until one completes."}, []string{"upstream"})
	m.gcRuns = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "gc_runs_total",
		Help: "Garbage collection runs (dry runs excluded), by result (success, failure)."}, []string{"upstream", "result"})
	m.gcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "gc_duration_seconds",
		Help: "Wall time of a garbage collection run.", Buckets: prometheus.ExponentialBuckets(0.1, 4, 10)},
		[]string{"upstream"})
	m.gcFreedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "gc_freed_bytes_total",
		Help: "Bytes deleted from storage by garbage collection."}, []string{"upstream"})
	m.gcFreedObjects = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "gc_freed_objects_total",
		Help: "Blobs and manifests deleted from storage by garbage collection."}, []string{"upstream"})
	m.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "evictions_total",
		Help: "Images evicted so that garbage collection can free them, by reason (max_size, max_unused)."},
		[]string{"upstream", "reason"})
	m.lastGC = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "last_gc_timestamp_seconds",
		Help: "Unix time the last garbage collection run ended, whatever its result; absent until one ends."},
		[]string{"upstream"})
	m.warmImages = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "warm_images_total",
		Help: "Images a warm (POST /api/v1/warm or a scheduled list) finished, by result (cached, failed)."},
		[]string{"upstream", "result"})
	m.warmBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "warm_bytes_total",
		Help: "Blob bytes warms made sure the cache keeps: fetched through it, or found kept already."},
		[]string{"upstream"})
	m.Registry.MustRegister(m.requests, m.requestDuration, m.inflight, m.hits, m.misses, m.servedBytes,
		m.fetchedBytes, m.upRequests, m.upDuration, m.redirects, m.refused, m.rateLimited, m.badContent, m.rateLimitRemain, m.stale, m.dedupWaiters,
		m.fillUncached, m.storageErrors, m.uncoordinated, m.takeovers, m.fillSources, m.gcLeader, m.coordUp,
		m.state, m.stored, m.fills, m.localCopies, m.pinned, m.disk, m.recycles, m.recycleFailures, m.lastRecycle, m.gcRuns, m.gcDuration, m.gcFreedBytes,
		m.gcFreedObjects, m.evictions, m.lastGC, m.warmImages, m.warmBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// For returns the reporter of one upstream, creating its fixed-set series
// at zero. Calling it again for the same name is cheap and shares state.
func (m *Metrics) For(name string) *Upstream {
	for _, k := range kinds {
		m.hits.WithLabelValues(name, k)
		m.misses.WithLabelValues(name, k)
		m.dedupWaiters.WithLabelValues(name, k)
	}
	for _, s := range sources {
		m.servedBytes.WithLabelValues(name, s)
	}
	for _, c := range staleCauses {
		m.stale.WithLabelValues(name, c)
	}
	for _, r := range uncachedReasons {
		m.fillUncached.WithLabelValues(name, r)
	}
	for _, op := range storageOps {
		m.storageErrors.WithLabelValues(name, op)
	}
	for _, s := range fillSources {
		m.fillSources.WithLabelValues(name, s)
	}
	for _, k := range badContentKinds {
		m.badContent.WithLabelValues(name, k)
	}
	for _, r := range recycleReasons {
		m.recycles.WithLabelValues(name, r)
	}
	for _, r := range gcResults {
		m.gcRuns.WithLabelValues(name, r)
	}
	for _, r := range evictReasons {
		m.evictions.WithLabelValues(name, r)
	}
	m.fetchedBytes.WithLabelValues(name)
	m.uncoordinated.WithLabelValues(name)
	m.takeovers.WithLabelValues(name)
	m.gcLeader.WithLabelValues(name)
	m.rateLimited.WithLabelValues(name)
	m.redirects.WithLabelValues(name)
	for _, r := range upstream.RefusedReasons {
		m.refused.WithLabelValues(name, r)
	}
	m.inflight.WithLabelValues(name)
	m.recycleFailures.WithLabelValues(name)
	m.gcFreedBytes.WithLabelValues(name)
	m.gcFreedObjects.WithLabelValues(name)
	m.gcDuration.WithLabelValues(name)
	return &Upstream{m: m, name: name}
}

// Upstream reports one upstream's events. It implements proxy.Observer
// (and so cache.Observer) directly.
type Upstream struct {
	m    *Metrics
	name string
}

// Hit counts a lookup served locally.
func (u *Upstream) Hit(kind string) { u.m.hits.WithLabelValues(u.name, kind).Inc() }

// Miss counts a lookup that went upstream.
func (u *Upstream) Miss(kind string) { u.m.misses.WithLabelValues(u.name, kind).Inc() }

// Stale counts a stale serve.
func (u *Upstream) Stale(cause string) { u.m.stale.WithLabelValues(u.name, cause).Inc() }

// DedupJoin counts a request joined to an in-flight fetch.
func (u *Upstream) DedupJoin(kind string) { u.m.dedupWaiters.WithLabelValues(u.name, kind).Inc() }

// UpstreamBytes counts bytes downloaded from the upstream.
func (u *Upstream) UpstreamBytes(n int64) { u.m.fetchedBytes.WithLabelValues(u.name).Add(float64(n)) }

// Begin and End bracket a client request, for the in-flight gauge.
func (u *Upstream) Begin() { u.m.inflight.WithLabelValues(u.name).Inc() }

// End ends what Begin started.
func (u *Upstream) End() { u.m.inflight.WithLabelValues(u.name).Dec() }

// Request records an answered client request.
func (u *Upstream) Request(kind string, status int, d time.Duration, fromCache bool, bytes int64) {
	u.m.requests.WithLabelValues(u.name, kind, strconv.Itoa(status)).Inc()
	u.m.requestDuration.WithLabelValues(u.name, kind).Observe(d.Seconds())
	source := "cache"
	if !fromCache {
		source = "upstream"
	}
	if bytes > 0 {
		u.m.servedBytes.WithLabelValues(u.name, source).Add(float64(bytes))
	}
}

// Upstream records one request sent upstream.
func (u *Upstream) Upstream(method string, status int, d time.Duration, h http.Header, err error) {
	u.m.upRequests.WithLabelValues(u.name, method, strconv.Itoa(status)).Inc()
	u.m.upDuration.WithLabelValues(u.name, method).Observe(d.Seconds())
	if status == http.StatusTooManyRequests {
		u.m.rateLimited.WithLabelValues(u.name).Inc()
	}
	if h != nil {
		if v := h.Get("Ratelimit-Remaining"); v != "" {
			// Docker Hub sends "100;w=21600".
			for i := 0; i < len(v); i++ {
				if v[i] == ';' {
					v = v[:i]
					break
				}
			}
			if n, err := strconv.ParseFloat(v, 64); err == nil {
				u.m.rateLimitRemain.WithLabelValues(u.name).Set(n)
			}
		}
	}
}

// BadContent counts an upstream answer not valid for its endpoint.
func (u *Upstream) BadContent(kind string) {
	if !slices.Contains(badContentKinds, kind) {
		kind = other
	}
	u.m.badContent.WithLabelValues(u.name, kind).Inc()
}

// FillUncached counts a fill streamed to its clients without being stored.
func (u *Upstream) FillUncached(reason string) {
	if !slices.Contains(uncachedReasons, reason) {
		reason = other
	}
	u.m.fillUncached.WithLabelValues(u.name, reason).Inc()
}

// StorageError counts a failed write to the store.
func (u *Upstream) StorageError(op string) {
	if !slices.Contains(storageOps, op) {
		op = other
	}
	u.m.storageErrors.WithLabelValues(u.name, op).Inc()
}

// FillUncoordinated counts a fill made without the cluster's lease.
func (u *Upstream) FillUncoordinated() { u.m.uncoordinated.WithLabelValues(u.name).Inc() }

// FillTakeover counts a fill lease revoked from a holder that is gone.
func (u *Upstream) FillTakeover() { u.m.takeovers.WithLabelValues(u.name).Inc() }

// FillSource counts a blob fill by where it reads from.
func (u *Upstream) FillSource(source string) {
	if !slices.Contains(fillSources, source) {
		source = other
	}
	u.m.fillSources.WithLabelValues(u.name, source).Inc()
}

// GCLeader says whether this replica holds the cluster's collection lease
// for the upstream now.
func (u *Upstream) GCLeader(held bool) {
	v := 0.0
	if held {
		v = 1
	}
	u.m.gcLeader.WithLabelValues(u.name).Set(v)
}

// CoordinationUp reports whether Redis answers this replica. Only
// upstreams of a coordinated replica report it, so a process without
// coordination has no such series.
func (u *Upstream) CoordinationUp(up bool) {
	v := 0.0
	if up {
		v = 1
	}
	u.m.coordUp.WithLabelValues(u.name).Set(v)
}

// UpstreamRedirect counts one redirect followed on an upstream call.
func (u *Upstream) UpstreamRedirect() { u.m.redirects.WithLabelValues(u.name).Inc() }

// UpstreamRefused counts one hop the hop policy refused, by reason.
func (u *Upstream) UpstreamRefused(reason string) {
	u.m.refused.WithLabelValues(u.name, reason).Inc()
}

// State sets the upstream's health state: 1 on its series, 0 on the others,
// so a state-timeline panel needs no absent() tricks.
func (u *Upstream) State(s health.State) {
	for _, x := range health.States {
		v := 0.0
		if x == s {
			v = 1
		}
		u.m.state.WithLabelValues(u.name, string(x)).Set(v)
	}
}

// Recycled records a recycle that swapped in a new App, for reason (one of
// internal/recycle's Reason constants).
func (u *Upstream) Recycled(reason string) {
	reason = oneOf(reason, recycleReasons)
	now := time.Now()
	u.m.recycles.WithLabelValues(u.name, reason).Inc()
	u.m.lastRecycle.WithLabelValues(u.name).Set(float64(now.UnixNano()) / 1e9)
	u.m.mu.Lock()
	u.m.lastFor(u.name).recycle = &Recycle{At: now, Reason: reason}
	u.m.mu.Unlock()
}

// RecycleFailed counts a recycle that could not build a new App.
func (u *Upstream) RecycleFailed() { u.m.recycleFailures.WithLabelValues(u.name).Inc() }

// Recycled implements recycle.Observer, so a recycle.Scheduler can report
// to the metrics directly.
func (m *Metrics) Recycled(upstream, reason string) { m.For(upstream).Recycled(reason) }

// RecycleFailed implements recycle.Observer.
func (m *Metrics) RecycleFailed(upstream, _ string) { m.For(upstream).RecycleFailed() }

// WarmImage counts one image a warm finished with result (WarmCached or
// WarmFailed).
func (m *Metrics) WarmImage(upstream, result string) {
	m.warmImages.WithLabelValues(upstream, oneOf(result, warmResults)).Inc()
}

// WarmBytes counts n blob bytes a warm made sure upstream's cache keeps.
func (m *Metrics) WarmBytes(upstream string, n int64) {
	if n > 0 {
		m.warmBytes.WithLabelValues(upstream).Add(float64(n))
	}
}

// GCRun records one finished garbage collection run that took d and
// deleted freedBytes in freedObjects blobs and manifests (also on failure,
// if it got that far); err is its error, nil on success. Do not call it for
// dry runs: they free nothing and are not "the last GC".
func (u *Upstream) GCRun(d time.Duration, freedBytes, freedObjects int64, err error) {
	result := GCSuccess
	if err != nil {
		result = GCFailure
	}
	now := time.Now()
	u.m.gcRuns.WithLabelValues(u.name, result).Inc()
	u.m.gcDuration.WithLabelValues(u.name).Observe(d.Seconds())
	u.m.gcFreedBytes.WithLabelValues(u.name).Add(float64(max(freedBytes, 0)))
	u.m.gcFreedObjects.WithLabelValues(u.name).Add(float64(max(freedObjects, 0)))
	u.m.lastGC.WithLabelValues(u.name).Set(float64(now.UnixNano()) / 1e9)
	u.m.mu.Lock()
	u.m.lastFor(u.name).gc = &GCRun{At: now, Result: result, Duration: d, FreedBytes: freedBytes, FreedObjects: freedObjects}
	u.m.mu.Unlock()
}

// Evicted counts n images evicted for reason ("max_size" or "max_unused",
// internal/gc's reasons).
func (u *Upstream) Evicted(reason string, n int) {
	if n > 0 {
		u.m.evictions.WithLabelValues(u.name, oneOf(reason, evictReasons)).Add(float64(n))
	}
}

// oneOf returns v if it is in set, else "other".
func oneOf(v string, set []string) string {
	if slices.Contains(set, v) {
		return v
	}
	return other
}

func (m *Metrics) lastFor(name string) *lastEvents {
	e := m.last[name]
	if e == nil {
		e = &lastEvents{}
		m.last[name] = e
	}
	return e
}
