package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Summary is one upstream's figures as the status API shows them: the same
// numbers /metrics exports, totalled since the process started.
type Summary struct {
	Hits, Misses       int64
	ServedFromCache    int64
	ServedFromUpstream int64
	FetchedBytes       int64
	StaleServes        int64
	RateLimited        int64
	// RateLimitRemaining is nil until the upstream sends the header.
	RateLimitRemaining *float64
	RecycleFailures    int64
	// LastGC and LastRecycle are nil until one happens in this process.
	LastGC      *GCRun
	LastRecycle *Recycle
}

// GCRun is the outcome of one garbage collection run.
type GCRun struct {
	At           time.Time
	Result       string
	Duration     time.Duration
	FreedBytes   int64
	FreedObjects int64
}

// Recycle is one completed recycle.
type Recycle struct {
	At     time.Time
	Reason string
}

// HitRatio is hits over all lookups, or nil before the first lookup: a
// ratio of nothing is not 0 %.
func (s Summary) HitRatio() *float64 {
	if s.Hits+s.Misses == 0 {
		return nil
	}
	r := float64(s.Hits) / float64(s.Hits+s.Misses)
	return &r
}

// Summary reads one upstream's figures back from the collectors.
func (m *Metrics) Summary(name string) Summary {
	var s Summary
	s.Hits = int64(total(m.hits, name, nil))
	s.Misses = int64(total(m.misses, name, nil))
	s.ServedFromCache = int64(total(m.servedBytes, name, map[string]string{"source": "cache"}))
	s.ServedFromUpstream = int64(total(m.servedBytes, name, map[string]string{"source": "upstream"}))
	s.FetchedBytes = int64(total(m.fetchedBytes, name, nil))
	s.StaleServes = int64(total(m.stale, name, nil))
	s.RateLimited = int64(total(m.rateLimited, name, nil))
	s.RecycleFailures = int64(total(m.recycleFailures, name, nil))
	if v, ok := value(m.rateLimitRemain, name); ok {
		s.RateLimitRemaining = &v
	}
	m.mu.Lock()
	if e := m.last[name]; e != nil {
		if e.gc != nil {
			gc := *e.gc
			s.LastGC = &gc
		}
		if e.recycle != nil {
			r := *e.recycle
			s.LastRecycle = &r
		}
	}
	m.mu.Unlock()
	return s
}

// total sums the counter or gauge values of c's series for upstream whose
// other labels match want.
func total(c prometheus.Collector, upstream string, want map[string]string) float64 {
	var sum float64
	each(c, upstream, func(labels map[string]string, v float64) {
		for k, w := range want {
			if labels[k] != w {
				return
			}
		}
		sum += v
	})
	return sum
}

// value is the single series of c for upstream, if it exists.
func value(c prometheus.Collector, upstream string) (v float64, ok bool) {
	each(c, upstream, func(_ map[string]string, x float64) { v, ok = x, true })
	return v, ok
}

func each(c prometheus.Collector, upstream string, f func(labels map[string]string, v float64)) {
	ch := make(chan prometheus.Metric)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	for pm := range ch {
		var d dto.Metric
		if err := pm.Write(&d); err != nil {
			continue
		}
		labels := make(map[string]string, len(d.GetLabel()))
		for _, l := range d.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["upstream"] != upstream {
			continue
		}
		switch {
		case d.Counter != nil:
			f(labels, d.GetCounter().GetValue())
		case d.Gauge != nil:
			f(labels, d.GetGauge().GetValue())
		}
	}
}
