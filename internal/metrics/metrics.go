// Package metrics owns multiproxy's Prometheus collectors. Everything else
// reports through the small methods of Upstream; only this package touches
// the Prometheus API. Every metric is prefixed multiproxy_ and labelled with
// the upstream's name; no label ever carries a repository or digest, so
// cardinality stays bounded by the config.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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
	rateLimited     *prometheus.CounterVec
	rateLimitRemain *prometheus.GaugeVec
	stale           *prometheus.CounterVec
	dedupWaiters    *prometheus.CounterVec
}

// New registers the collectors on a fresh registry.
func New() *Metrics {
	const ns = "multiproxy"
	m := &Metrics{Registry: prometheus.NewRegistry()}
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
		Help: "Requests sent to the upstream (including auth), by method and status code (0: no answer)."},
		[]string{"upstream", "method", "code"})
	m.upDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_request_duration_seconds",
		Help: "Upstream time to response headers.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)},
		[]string{"upstream", "method"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_rate_limited_total",
		Help: "Upstream answers with status 429."}, []string{"upstream"})
	m.rateLimitRemain = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "upstream_ratelimit_remaining",
		Help: "Last ratelimit-remaining value the upstream sent (Docker Hub)."}, []string{"upstream"})
	m.stale = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "stale_serves_total",
		Help: "Tags served from the cache because the upstream could not revalidate them, by cause."},
		[]string{"upstream", "cause"})
	m.dedupWaiters = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dedup_waiters_total",
		Help: "Requests joined to a fetch already in flight instead of starting their own, by kind."},
		[]string{"upstream", "kind"})
	m.Registry.MustRegister(m.requests, m.requestDuration, m.inflight, m.hits, m.misses, m.servedBytes,
		m.fetchedBytes, m.upRequests, m.upDuration, m.rateLimited, m.rateLimitRemain, m.stale, m.dedupWaiters,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// For returns the reporter of one upstream.
func (m *Metrics) For(name string) *Upstream {
	return &Upstream{m: m, name: name}
}

// Upstream reports one upstream's events. It implements proxy.Observer.
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
