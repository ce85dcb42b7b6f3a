package metrics

import "github.com/prometheus/client_golang/prometheus"

func newPinned(ns string) *storedBytes {
	return &storedBytes{desc: prometheus.NewDesc(ns+"_pinned_bytes",
		"Bytes of cached manifests and blobs that pins (upstreams[].pins and `multiproxy pin add`) hold: never evicted. 0 for an upstream without pins.",
		[]string{"upstream"}, nil), funcs: map[string]func() (int64, bool){}}
}

// PinnedBytesFunc makes multiproxy_pinned_bytes report n() at scrape time;
// ok=false leaves the sample out.
func (u *Upstream) PinnedBytesFunc(n func() (int64, bool)) {
	u.m.pinned.mu.Lock()
	u.m.pinned.funcs[u.name] = n
	u.m.pinned.mu.Unlock()
}
