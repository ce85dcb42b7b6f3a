package admin

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/multiproxy/multiproxy/internal/health"
	"github.com/multiproxy/multiproxy/internal/metrics"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

const dashboardPath = "../../deploy/grafana/multiproxy.json"

// eventOnly are metrics that appear only once their event has happened in
// the process (a GC, a recycle, a ratelimit-remaining header): a live
// scrape after pulls cannot show them, so only the all-hooks-touched
// registry vouches for them.
var eventOnly = []string{
	"multiproxy_last_gc_timestamp_seconds",
	"multiproxy_last_recycle_timestamp_seconds",
	"multiproxy_upstream_ratelimit_remaining",
}

var metricRef = regexp.MustCompile(`multiproxy_[a-z0-9_]+`)

// dashboardQueries returns every PromQL expression in the dashboard:
// panel targets and template variable queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatalf("read dashboard: %v", err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardPath, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") && strings.Contains(s, "multiproxy_") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	if len(out) < 10 {
		t.Fatalf("only %d queries found in the dashboard", len(out))
	}
	return out
}

// dashboardMetrics maps each metric the dashboard selects to a query using it.
func dashboardMetrics(t *testing.T) map[string]string {
	t.Helper()
	used := map[string]string{}
	for _, q := range dashboardQueries(t) {
		if err := balanced(q); err != "" {
			t.Errorf("query %q: %s", q, err)
		}
		for _, name := range metricRef.FindAllString(q, -1) {
			used[name] = q
		}
	}
	return used
}

// balanced catches the PromQL typos a JSON edit makes most: unbalanced
// brackets and quotes. A full parser is not among our dependencies.
func balanced(q string) string {
	var stack []rune
	pair := map[rune]rune{')': '(', ']': '[', '}': '{'}
	inQuote := false
	for _, r := range q {
		switch {
		case r == '"':
			inQuote = !inQuote
		case inQuote:
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, r)
		case r == ')' || r == ']' || r == '}':
			if len(stack) == 0 || stack[len(stack)-1] != pair[r] {
				return "unbalanced " + string(r)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inQuote || len(stack) > 0 {
		return "unclosed bracket or quote"
	}
	return ""
}

// selectable lists the series names PromQL can select in fams: a
// histogram is only reachable through its _bucket, _sum and _count.
func selectable(fams map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, fam := range fams {
		if len(fam.GetMetric()) == 0 {
			continue
		}
		switch fam.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name], out[name+"_sum"], out[name+"_count"] = true, true, true
		default:
			out[name] = true
		}
	}
	return out
}

// everyHookTouched is a registry on which every reporting method has run
// once, so every metric the binary can export is there.
func everyHookTouched(t *testing.T) ts.Metrics {
	t.Helper()
	m := metrics.New()
	u := m.For("docker.io")
	u.Hit("blob")
	u.Miss("manifest")
	u.Stale("timeout")
	u.DedupJoin("blob")
	u.UpstreamBytes(10)
	u.Begin()
	u.End()
	u.Request("manifest", http.StatusOK, time.Millisecond, true, 100)
	u.Upstream(http.MethodGet, http.StatusTooManyRequests, time.Millisecond, http.Header{"Ratelimit-Remaining": {"99;w=21600"}}, nil)
	u.State(health.Reachable)
	u.StoredBytesFunc(func() (int64, bool) { return 1 << 20, true })
	u.DiskFunc(func() (metrics.Disk, bool) {
		return metrics.Disk{Size: 1 << 40, Free: 1 << 39, Reserved: 1 << 20, MinFree: 1 << 30}, true
	})
	u.FillUncached("no_space")
	u.StorageError("commit")
	u.Recycled("interval")
	u.RecycleFailed()
	u.GCRun(time.Second, 1<<20, 3, nil)
	u.Evicted("max_size", 1)
	u.FillUncoordinated()
	u.LocalCacheFunc(func() (int64, bool) { return 1 << 20, true })
	u.FillSource("peer")
	u.GCLeader(true)
	u.CoordinationUp(true)
	return ts.Gathered(t, m.Registry)
}

func TestDashboardQueriesOnlyExportedMetrics(t *testing.T) {
	exported := selectable(everyHookTouched(t))
	used := dashboardMetrics(t)
	for name, q := range used {
		if !exported[name] {
			t.Errorf("the dashboard queries %s, which multiproxy does not export (in %q)", name, q)
		}
	}
	// The list of what operators need on the dashboard.
	for _, need := range []string{
		"multiproxy_cache_hits_total", "multiproxy_requests_total", "multiproxy_served_bytes_total",
		"multiproxy_upstream_request_duration_seconds_bucket", "multiproxy_stale_serves_total",
		"multiproxy_upstream_rate_limited_total", "multiproxy_upstream_ratelimit_remaining",
		"multiproxy_inflight_requests", "multiproxy_stored_bytes", "multiproxy_gc_runs_total",
		"multiproxy_recycles_total",
	} {
		if _, ok := used[need]; !ok {
			t.Errorf("the dashboard has no panel on %s", need)
		}
	}
	for _, name := range eventOnly {
		if !exported[name] {
			t.Errorf("eventOnly lists %s, which is not exported at all", name)
		}
	}
}

// checkDashboardMetricsLive asserts a real process, after real pulls,
// exports every metric the dashboard queries, bar the eventOnly ones.
func checkDashboardMetricsLive(t *testing.T, fams map[string]*dto.MetricFamily) {
	t.Helper()
	live := selectable(fams)
	var missing []string
	for name := range dashboardMetrics(t) {
		if !live[name] && !slices.Contains(eventOnly, name) {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("a live /metrics after pulls lacks what the dashboard queries: %v", missing)
	}
}

func TestEveryMetricHasBoundedLabels(t *testing.T) {
	checkLabelsBounded(t, everyHookTouched(t))
}
