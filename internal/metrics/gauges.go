package metrics

// Gauges read at scrape time from funcs the process registers per upstream:
// sizes and disk figures nobody must wait for.

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// StoredBytesFunc makes multiproxy_stored_bytes report size() at scrape
// time. size must be cheap (a cached walk) and may say ok=false while no
// size is known yet, leaving the sample out rather than reporting 0.
func (u *Upstream) StoredBytesFunc(size func() (n int64, ok bool)) {
	u.m.stored.mu.Lock()
	u.m.stored.funcs[u.name] = size
	u.m.stored.mu.Unlock()
}

// FillsFunc makes multiproxy_fills_in_flight report n() at scrape time.
func (u *Upstream) FillsFunc(n func() (int64, bool)) {
	u.m.fills.mu.Lock()
	u.m.fills.funcs[u.name] = n
	u.m.fills.mu.Unlock()
}

// LocalCacheFunc makes multiproxy_local_cache_bytes report n() at scrape
// time; ok=false leaves the sample out.
func (u *Upstream) LocalCacheFunc(n func() (int64, bool)) {
	u.m.localCopies.mu.Lock()
	u.m.localCopies.funcs[u.name] = n
	u.m.localCopies.mu.Unlock()
}

// Disk is one reading of the filesystem holding an upstream's storage.
type Disk struct {
	Size     int64 // the filesystem's size
	Free     int64 // free to an unprivileged writer
	Reserved int64 // reserved by fills still writing
	MinFree  int64 // the upstream's watermark in bytes on this filesystem
}

// DiskFunc makes multiproxy_disk_{size,free,reserved,min_free}_bytes report
// f at scrape time. f must be cheap (a statfs) and may say ok=false when it
// cannot tell (the storage directory is gone), leaving the samples out
// rather than reporting 0.
func (u *Upstream) DiskFunc(f func() (d Disk, ok bool)) {
	u.m.disk.mu.Lock()
	u.m.disk.funcs[u.name] = f
	u.m.disk.mu.Unlock()
}

// Forget drops the series read at scrape time (stored bytes, disk figures)
// of an upstream a reload removed. Counters stay: they are totals since the
// process started.
func (m *Metrics) Forget(name string) {
	m.stored.mu.Lock()
	delete(m.stored.funcs, name)
	m.stored.mu.Unlock()
	m.fills.mu.Lock()
	delete(m.fills.funcs, name)
	m.fills.mu.Unlock()
	m.localCopies.mu.Lock()
	delete(m.localCopies.funcs, name)
	m.localCopies.mu.Unlock()
	m.pinned.mu.Lock()
	delete(m.pinned.funcs, name)
	m.pinned.mu.Unlock()
	m.disk.mu.Lock()
	delete(m.disk.funcs, name)
	m.disk.mu.Unlock()
}

// storedBytes is a gauge whose values are read from the sizers at scrape
// time, so a scrape never waits for a storage walk and never reports a
// size nobody has measured.
type storedBytes struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	funcs map[string]func() (int64, bool)
}

func (s *storedBytes) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *storedBytes) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	funcs := make(map[string]func() (int64, bool), len(s.funcs))
	for k, f := range s.funcs {
		funcs[k] = f
	}
	s.mu.Unlock()
	for name, f := range funcs {
		if n, ok := f(); ok {
			ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, float64(n), name)
		}
	}
}

// diskBytes reads each upstream's filesystem figures at scrape time.
type diskBytes struct {
	size, free, reserved, minFree *prometheus.Desc

	mu    sync.Mutex
	funcs map[string]func() (Disk, bool)
}

func (d *diskBytes) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.size
	ch <- d.free
	ch <- d.reserved
	ch <- d.minFree
}

func (d *diskBytes) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	funcs := make(map[string]func() (Disk, bool), len(d.funcs))
	for k, f := range d.funcs {
		funcs[k] = f
	}
	d.mu.Unlock()
	for name, f := range funcs {
		x, ok := f()
		if !ok {
			continue
		}
		for desc, v := range map[*prometheus.Desc]int64{d.size: x.Size, d.free: x.Free, d.reserved: x.Reserved, d.minFree: x.MinFree} {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(v), name)
		}
	}
}
