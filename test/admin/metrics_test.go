package admin

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// workload is what one upstream is put through: distinct images so that
// the two upstreams' numbers differ and a mix-up of labels shows.
type workload struct {
	upstream string
	images   []image
}

type image struct {
	repo, tag string
	layers    int
	size      int64
}

// counters is every per-upstream figure the test checks, as scraped.
type counters struct {
	hits, misses       map[string]float64 // by kind
	servedCache        float64
	servedUpstream     float64
	fetched            float64
	stale, dedupJoined float64
}

func read(fams ts.Metrics, upstream string) counters {
	c := counters{hits: map[string]float64{}, misses: map[string]float64{}}
	for _, kind := range []string{"tag", "manifest", "blob"} {
		c.hits[kind], _ = fams.Value("multiproxy_cache_hits_total", map[string]string{"upstream": upstream, "kind": kind})
		c.misses[kind], _ = fams.Value("multiproxy_cache_misses_total", map[string]string{"upstream": upstream, "kind": kind})
	}
	c.servedCache, _ = fams.Value("multiproxy_served_bytes_total", map[string]string{"upstream": upstream, "source": "cache"})
	c.servedUpstream, _ = fams.Value("multiproxy_served_bytes_total", map[string]string{"upstream": upstream, "source": "upstream"})
	c.fetched, _ = fams.Value("multiproxy_upstream_fetched_bytes_total", map[string]string{"upstream": upstream})
	// Every cause and kind together.
	c.stale, _ = fams.Value("multiproxy_stale_serves_total", map[string]string{"upstream": upstream})
	c.dedupJoined, _ = fams.Value("multiproxy_dedup_waiters_total", map[string]string{"upstream": upstream})
	return c
}

func (c counters) String() string {
	return fmt.Sprintf("hits %v misses %v served cache=%v upstream=%v fetched %v stale %v dedup %v",
		c.hits, c.misses, c.servedCache, c.servedUpstream, c.fetched, c.stale, c.dedupJoined)
}

func TestMetricsMatchTheWorkloadPerUpstream(t *testing.T) {
	workloads := []workload{
		{"docker.io", []image{{"library/app", "1", 2, 96 << 10}}},
		{"ghcr.io", []image{{"team/tool", "v2", 3, 40 << 10}, {"team/base", "latest", 1, 300 << 10}}},
	}
	var ups []ts.ProxyUpstream
	for _, w := range workloads {
		reg := ts.StartRegistry(t, ts.RegistryOptions{})
		for _, img := range w.images {
			ts.PushImage(t, reg, img.repo+":"+img.tag, img.layers, img.size)
		}
		ups = append(ups, ts.ProxyUpstream{Name: w.upstream, Reg: reg})
	}
	p := ts.StartProxy(t, ups...)

	// Cold, then warm, one upstream after the other: each scrape must show
	// exactly this upstream's pull and leave the other's figures alone.
	cold := map[string]pulled{}
	for _, w := range workloads {
		sum := pullAll(t, p, w)
		cold[w.upstream] = sum
		fams := ts.Scrape(t, p.AdminURL())
		for _, other := range workloads {
			got := read(fams, other.upstream)
			want := counters{hits: map[string]float64{"tag": 0, "manifest": 0, "blob": 0},
				misses: map[string]float64{"tag": 0, "manifest": 0, "blob": 0}}
			if c, ok := cold[other.upstream]; ok {
				n := float64(len(other.images))
				want.misses = map[string]float64{"tag": n, "manifest": n, "blob": float64(c.nBlobs)}
				// A cold manifest is filled, then served from the store; a
				// cold blob is streamed to the client as it arrives.
				want.servedCache = float64(c.base + c.manifest)
				want.servedUpstream = float64(c.blobs)
				want.fetched = float64(c.manifest + c.blobs)
			}
			if got.String() != want.String() {
				t.Errorf("after the cold pull of %s, %s:\n got %s\nwant %s", w.upstream, other.upstream, got, want)
			}
		}
	}

	// Warm means stored: clients get a blob's last byte just before its
	// fill commits.
	p.Settle(t)
	warm := map[string]pulled{}
	for _, w := range workloads {
		sum := pullAll(t, p, w)
		if sum.total() != cold[w.upstream].total() {
			t.Fatalf("%s: the warm pull got %d bytes, the cold one %d", w.upstream, sum.total(), cold[w.upstream].total())
		}
		warm[w.upstream] = sum
	}
	fams := ts.Scrape(t, p.AdminURL())
	for _, w := range workloads {
		c, n := cold[w.upstream], float64(len(w.images))
		want := counters{
			// The warm tag was revalidated (a HEAD) and found unchanged;
			// every blob came from the store.
			hits:           map[string]float64{"tag": n, "manifest": 0, "blob": float64(c.nBlobs)},
			misses:         map[string]float64{"tag": n, "manifest": n, "blob": float64(c.nBlobs)},
			servedCache:    float64(c.base + c.manifest + warm[w.upstream].total()),
			servedUpstream: float64(c.blobs),
			fetched:        float64(c.manifest + c.blobs),
		}
		got := read(fams, w.upstream)
		if got.String() != want.String() {
			t.Errorf("after cold and warm pulls, %s:\n got %s\nwant %s", w.upstream, got, want)
		}

		// The status API reports the same figures.
		us := upstreamStatus(t, status(t, p), w.upstream)
		if wantHits, wantMisses := sum(want.hits), sum(want.misses); us.CacheHits != wantHits || us.CacheMisses != wantMisses {
			t.Errorf("%s status: %d hits %d misses, want %d and %d", w.upstream, us.CacheHits, us.CacheMisses, wantHits, wantMisses)
		}
		if us.HitRatio == nil || *us.HitRatio != float64(us.CacheHits)/float64(us.CacheHits+us.CacheMisses) {
			t.Errorf("%s status: hit ratio %v for %d hits and %d misses", w.upstream, us.HitRatio, us.CacheHits, us.CacheMisses)
		}
		if us.ServedBytes.Cache != int64(want.servedCache) || us.ServedBytes.Upstream != int64(want.servedUpstream) ||
			us.FetchedBytes != int64(want.fetched) {
			t.Errorf("%s status: served %+v fetched %d, want cache %v upstream %v fetched %v",
				w.upstream, us.ServedBytes, us.FetchedBytes, want.servedCache, want.servedUpstream, want.fetched)
		}
	}

	// Stored bytes: at least everything fetched (manifests, configs,
	// layers), plus a little metadata (link files), never wildly more.
	for _, w := range workloads {
		c := cold[w.upstream]
		floor := c.manifest + c.blobs
		ts.WaitUntil(t, 10*time.Second, w.upstream+" stored bytes", func() (bool, string) {
			us := upstreamStatus(t, status(t, p), w.upstream)
			if us.StoredBytes == nil {
				return false, "null"
			}
			n := *us.StoredBytes
			return n >= floor && n < floor+64<<10, fmt.Sprintf("%d bytes (fetched %d)", n, floor)
		})
		stored, ok := ts.Scrape(t, p.AdminURL()).Value("multiproxy_stored_bytes", map[string]string{"upstream": w.upstream})
		if !ok || stored < float64(floor) {
			t.Errorf("multiproxy_stored_bytes{upstream=%q} = %v (present %v), want at least %d", w.upstream, stored, ok, floor)
		}
	}

	checkLabelsBounded(t, ts.Scrape(t, p.AdminURL()))
	checkDashboardMetricsLive(t, ts.Scrape(t, p.AdminURL()))
}

func sum(byKind map[string]float64) int64 {
	var n float64
	for _, v := range byKind {
		n += v
	}
	return int64(n)
}

// forbiddenLabels would each mint a series per image pulled.
var forbiddenLabels = []string{"repository", "repo", "digest", "image", "tag", "reference", "ref"}

// checkLabelsBounded asserts every multiproxy_ series carries an upstream
// label and none a label whose values grow with what clients pull.
func checkLabelsBounded(t *testing.T, fams map[string]*dto.MetricFamily) {
	t.Helper()
	n := 0
	for name, fam := range fams {
		if !strings.HasPrefix(name, "multiproxy_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			n++
			hasUpstream := false
			for _, l := range m.GetLabel() {
				if slices.Contains(forbiddenLabels, l.GetName()) {
					t.Errorf("%s%s: label %q is unbounded", name, labelsOf(m), l.GetName())
				}
				hasUpstream = hasUpstream || l.GetName() == "upstream"
			}
			if !hasUpstream {
				t.Errorf("%s%s has no upstream label", name, labelsOf(m))
			}
		}
	}
	if n == 0 {
		t.Error("no multiproxy_ series at all")
	}
}
