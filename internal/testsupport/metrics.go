package testsupport

import (
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a /metrics page (or one Gather of a registry):
// metric families by name.
type Metrics map[string]*dto.MetricFamily

// scrapeClient never reuses a connection across scrapes and never waits
// forever.
var scrapeClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Scrape fetches and parses adminURL+"/metrics" (a Proxy's AdminURL, or
// any multiproxy admin listener), failing the test if it cannot.
func Scrape(t testing.TB, adminURL string) Metrics {
	t.Helper()
	resp, err := scrapeClient.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatalf("testsupport: scrape %s/metrics: %v", adminURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("testsupport: scrape %s/metrics: %s", adminURL, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("testsupport: parse %s/metrics: %v", adminURL, err)
	}
	return fams
}

// Gathered gathers g (a prometheus.Registry, say) in-process, for tests of
// metrics without an HTTP listener.
func Gathered(t testing.TB, g prometheus.Gatherer) Metrics {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("testsupport: gather metrics: %v", err)
	}
	m := make(Metrics, len(fams))
	for _, f := range fams {
		m[f.GetName()] = f
	}
	return m
}

// Metric scrapes adminURL+"/metrics" and returns m.Value(name, labels), 0
// if no series matches.
func Metric(t testing.TB, adminURL, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := Scrape(t, adminURL).Value(name, labels)
	return v
}

// Series lists the series of name whose labels include labels (nil or
// empty matches every series).
func (m Metrics) Series(name string, labels map[string]string) []*dto.Metric {
	var out []*dto.Metric
next:
	for _, s := range m[name].GetMetric() {
		got := make(map[string]string, len(s.GetLabel()))
		for _, l := range s.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				continue next
			}
		}
		out = append(out, s)
	}
	return out
}

// Value is the sum of the series of name whose labels include labels: with
// every label given, that one series' value; with fewer, the total over the
// rest (say, every reason of a counter for one upstream). A counter or
// gauge counts its value, a histogram or summary its sample count. ok is
// false when no series matches.
func (m Metrics) Value(name string, labels map[string]string) (v float64, ok bool) {
	for _, s := range m.Series(name, labels) {
		switch {
		case s.Counter != nil:
			v += s.GetCounter().GetValue()
		case s.Gauge != nil:
			v += s.GetGauge().GetValue()
		case s.Untyped != nil:
			v += s.GetUntyped().GetValue()
		case s.Histogram != nil:
			v += float64(s.GetHistogram().GetSampleCount())
		case s.Summary != nil:
			v += float64(s.GetSummary().GetSampleCount())
		default:
			continue
		}
		ok = true
	}
	return v, ok
}
