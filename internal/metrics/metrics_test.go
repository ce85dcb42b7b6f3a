package metrics_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/health"
	"github.com/multiproxy/multiproxy/internal/metrics"
	"github.com/multiproxy/multiproxy/internal/recycle"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A recycle.Scheduler can report straight to the metrics.
var _ recycle.Observer = (*metrics.Metrics)(nil)

// gathered is the value of the series of name with labels, as
// testsupport.Metrics.Value reads it.
func gathered(t *testing.T, m *metrics.Metrics, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	return ts.Gathered(t, m.Registry).Value(name, labels)
}

func TestSummaryKeepsUpstreamsApart(t *testing.T) {
	m := metrics.New()
	hub, ghcr := m.For("docker.io"), m.For("ghcr.io")
	hub.Hit("blob")
	hub.Hit("tag")
	hub.Miss("blob")
	hub.Request("blob", http.StatusOK, time.Millisecond, true, 1000)
	hub.Request("blob", http.StatusOK, time.Millisecond, false, 300)
	hub.UpstreamBytes(300)
	hub.Stale("timeout")
	hub.Upstream(http.MethodGet, http.StatusTooManyRequests, time.Millisecond, http.Header{"Ratelimit-Remaining": {"42;w=21600"}}, nil)

	s := m.Summary("docker.io")
	if s.Hits != 2 || s.Misses != 1 || s.ServedFromCache != 1000 || s.ServedFromUpstream != 300 ||
		s.FetchedBytes != 300 || s.StaleServes != 1 || s.RateLimited != 1 {
		t.Errorf("docker.io summary %+v", s)
	}
	if r := s.HitRatio(); r == nil || *r != 2.0/3 {
		t.Errorf("hit ratio %v, want 2/3", r)
	}
	if s.RateLimitRemaining == nil || *s.RateLimitRemaining != 42 {
		t.Errorf("ratelimit remaining %v, want 42 from %q", s.RateLimitRemaining, "42;w=21600")
	}

	o := m.Summary("ghcr.io")
	if o.Hits != 0 || o.ServedFromCache != 0 || o.RateLimitRemaining != nil || o.HitRatio() != nil ||
		o.LastGC != nil || o.LastRecycle != nil {
		t.Errorf("ghcr.io took docker.io's figures, or invented some: %+v", o)
	}
	_ = ghcr
}

func TestGCAndRecycleFigures(t *testing.T) {
	m := metrics.New()
	u := m.For("docker.io")
	// Zero before anything happened, so increase() sees the first run.
	if v, ok := gathered(t, m, "multiproxy_gc_runs_total", map[string]string{"upstream": "docker.io", "result": metrics.GCSuccess}); !ok || v != 0 {
		t.Errorf("gc_runs_total before any run: %v (present %v), want 0", v, ok)
	}
	if _, ok := gathered(t, m, "multiproxy_last_gc_timestamp_seconds", nil); ok {
		t.Error("a last-GC timestamp before any GC")
	}

	before := time.Now()
	u.GCRun(2*time.Second, 5<<20, 7, nil)
	u.GCRun(time.Second, 1<<20, 1, errors.New("disk full"))
	u.Evicted("max_unused", 2)
	u.Evicted("because", 1)
	u.Recycled(recycle.ReasonMemory)
	m.Recycled("docker.io", "someone's typo")
	m.RecycleFailed("docker.io", recycle.ReasonInterval)

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"multiproxy_gc_runs_total", map[string]string{"result": metrics.GCSuccess}, 1},
		{"multiproxy_gc_runs_total", map[string]string{"result": metrics.GCFailure}, 1},
		{"multiproxy_gc_freed_bytes_total", nil, 6 << 20},
		{"multiproxy_gc_freed_objects_total", nil, 8},
		{"multiproxy_gc_duration_seconds", nil, 2},
		{"multiproxy_evictions_total", map[string]string{"reason": "max_unused"}, 2},
		// Unknown values are folded, never minted into new series.
		{"multiproxy_evictions_total", map[string]string{"reason": "other"}, 1},
		{"multiproxy_recycles_total", map[string]string{"reason": "memory"}, 1},
		{"multiproxy_recycles_total", map[string]string{"reason": "other"}, 1},
		{"multiproxy_recycle_failures_total", nil, 1},
	} {
		if c.labels == nil {
			c.labels = map[string]string{}
		}
		c.labels["upstream"] = "docker.io"
		if v, ok := gathered(t, m, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if v, _ := gathered(t, m, "multiproxy_last_gc_timestamp_seconds", nil); v < float64(before.Unix()) {
		t.Errorf("last GC timestamp %v, before the run", v)
	}

	s := m.Summary("docker.io")
	if s.LastGC == nil || s.LastGC.Result != metrics.GCFailure || s.LastGC.FreedBytes != 1<<20 || s.LastGC.At.Before(before) {
		t.Errorf("last GC %+v, want the failed second run", s.LastGC)
	}
	if s.LastRecycle == nil || s.LastRecycle.Reason != "other" || s.RecycleFailures != 1 {
		t.Errorf("last recycle %+v, %d failures", s.LastRecycle, s.RecycleFailures)
	}
}

func TestStateAndStoredBytes(t *testing.T) {
	m := metrics.New()
	u := m.For("docker.io")
	u.State(health.Down)
	for _, s := range health.States {
		want := 0.0
		if s == health.Down {
			want = 1
		}
		if v, ok := gathered(t, m, "multiproxy_upstream_state", map[string]string{"upstream": "docker.io", "state": string(s)}); !ok || v != want {
			t.Errorf("upstream_state{state=%s} = %v (present %v), want %v", s, v, ok, want)
		}
	}

	known := false
	u.StoredBytesFunc(func() (int64, bool) { return 1234, known })
	if _, ok := gathered(t, m, "multiproxy_stored_bytes", nil); ok {
		t.Error("stored bytes reported before any walk finished")
	}
	known = true
	if v, ok := gathered(t, m, "multiproxy_stored_bytes", map[string]string{"upstream": "docker.io"}); !ok || v != 1234 {
		t.Errorf("stored bytes %v (present %v), want 1234", v, ok)
	}
}

func TestDegradedIsAState(t *testing.T) {
	m := metrics.New()
	u := m.For("docker.io")
	u.State(health.Degraded)
	for _, s := range []health.State{health.Degraded, health.Reachable} {
		want := 0.0
		if s == health.Degraded {
			want = 1
		}
		if v, ok := gathered(t, m, "multiproxy_upstream_state", map[string]string{"upstream": "docker.io", "state": string(s)}); !ok || v != want {
			t.Errorf("upstream_state{state=%s} = %v (present %v), want %v", s, v, ok, want)
		}
	}
}

func TestDiskFiguresAtScrapeTime(t *testing.T) {
	m := metrics.New()
	hub, ghcr := m.For("docker.io"), m.For("ghcr.io")
	if _, ok := gathered(t, m, "multiproxy_disk_free_bytes", nil); ok {
		t.Error("disk free bytes reported before any upstream has a DiskFunc")
	}
	d := metrics.Disk{Size: 100 << 30, Free: 10 << 30, MinFree: 1 << 30}
	ok := true
	calls := 0
	hub.DiskFunc(func() (metrics.Disk, bool) { calls++; return d, ok })
	ghcr.DiskFunc(func() (metrics.Disk, bool) { return metrics.Disk{}, false })

	check := func(want metrics.Disk) {
		t.Helper()
		for name, want := range map[string]int64{
			"multiproxy_disk_size_bytes": want.Size, "multiproxy_disk_free_bytes": want.Free,
			"multiproxy_disk_reserved_bytes": want.Reserved, "multiproxy_disk_min_free_bytes": want.MinFree,
		} {
			if v, present := gathered(t, m, name, map[string]string{"upstream": "docker.io"}); !present || v != float64(want) {
				t.Errorf("%s{upstream=docker.io} = %v (present %v), want %v", name, v, present, want)
			}
			if _, present := gathered(t, m, name, map[string]string{"upstream": "ghcr.io"}); present {
				t.Errorf("%s{upstream=ghcr.io} reported although its func cannot tell", name)
			}
		}
	}
	check(d)
	// Read again at the next scrape, not cached.
	d.Free, d.Reserved = 3<<30, 512<<20
	check(d)
	if calls == 0 {
		t.Fatal("DiskFunc never called")
	}

	ok = false
	if _, present := gathered(t, m, "multiproxy_disk_free_bytes", map[string]string{"upstream": "docker.io"}); present {
		t.Error("disk free bytes reported while the func says it cannot tell")
	}

	ok = true
	hub.StoredBytesFunc(func() (int64, bool) { return 1, true })
	m.Forget("docker.io")
	for _, name := range []string{"multiproxy_disk_free_bytes", "multiproxy_disk_reserved_bytes", "multiproxy_stored_bytes"} {
		if _, present := gathered(t, m, name, map[string]string{"upstream": "docker.io"}); present {
			t.Errorf("%s still reported for a forgotten upstream", name)
		}
	}
}

func TestStorageCountersStartAtZero(t *testing.T) {
	m := metrics.New()
	u := m.For("docker.io")
	for _, labels := range []map[string]string{{"reason": "no_space"}, {"reason": "storage_error"}} {
		labels["upstream"] = "docker.io"
		if v, ok := gathered(t, m, "multiproxy_fill_uncached_total", labels); !ok || v != 0 {
			t.Errorf("fill_uncached_total%v = %v (present %v) before any event, want 0", labels, v, ok)
		}
	}
	for _, op := range []string{"spool", "commit", "manifest"} {
		if v, ok := gathered(t, m, "multiproxy_storage_errors_total", map[string]string{"upstream": "docker.io", "op": op}); !ok || v != 0 {
			t.Errorf("storage_errors_total{op=%s} = %v (present %v) before any event, want 0", op, v, ok)
		}
	}
	u.StorageError("commit")
	u.FillUncached("no_space")
	if v, _ := gathered(t, m, "multiproxy_storage_errors_total", map[string]string{"op": "commit"}); v != 1 {
		t.Errorf("storage_errors_total{op=commit} = %v, want 1", v)
	}
	if v, _ := gathered(t, m, "multiproxy_fill_uncached_total", map[string]string{"reason": "no_space"}); v != 1 {
		t.Errorf("fill_uncached_total{reason=no_space} = %v, want 1", v)
	}
}
