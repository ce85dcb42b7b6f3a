package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// --ha: multiproxy's high-availability mode (replicas sharing one bucket
// and a Redis, one fill per blob per cluster through a lease) against
// distribution's own answer (registry proxies on one bucket with the redis
// blob descriptor cache), all on 127.0.0.1.

// haParams sizes the --ha run.
type haParams struct {
	reps        int
	layer       int64 // each of the cold image's 3 layers
	clients     int   // cold fan-out clients, round-robin over the replicas
	replicas    int
	warmPerConn int   // warm GETs per client at 16 clients, per rep
	leaseN      int   // small cold blobs pulled one after another, per rep
	leaseSize   int64 // their size
	leaseTTL    time.Duration
	timeout     time.Duration
	killSize    int64 // the blob whose holder is killed halfway through its fill
}

// The systems of --ha, as series keys.
const (
	haMP   = "multiproxy" // the HA cluster (3 replicas, S3 + Redis)
	haRef  = "reference"  // 3 reference proxies on S3 + redis cache
	haFS   = "mp-fs"      // one multiproxy on the filesystem (default storage)
	haSolo = "mp-s3"      // one multiproxy on the same S3, no coordination
)

type haSys struct {
	name   string
	bases  []string
	admins []string // multiproxy's admin listeners, for its metrics
	c      *http.Client
}

type haBench struct {
	*bench
	hp haParams

	s3   *testinfra.S3
	rd   *testinfra.Redis
	reps []*mpInstance // the HA cluster
	refs *refFleet     // the reference cluster
	fs   *mpInstance
	solo *mpInstance

	coldImg  []pushed
	leaseImg []pushed
	killImg  pushed

	mc *http.Client // metrics scrapes
}

func haParamsFor(quick bool, reps int) haParams {
	p := haParams{reps: 5, layer: 20 << 20, clients: 48, replicas: 3, warmPerConn: 8,
		leaseN: 100, leaseSize: 64 << 10, leaseTTL: 10 * time.Second, timeout: 3 * time.Second,
		killSize: 100 << 20}
	if quick {
		p.reps, p.layer, p.warmPerConn, p.leaseN, p.killSize = 3, 8<<20, 4, 50, 20<<20
	}
	if reps > 0 {
		p.reps = reps
	}
	return p
}

func (b *bench) runHA() (*results, error) {
	h := &haBench{bench: b, hp: haParamsFor(b.o.quick, b.o.reps), mc: &http.Client{
		Transport: &http.Transport{Proxy: nil}, Timeout: 10 * time.Second}}
	if b.o.versitygwBin == "" || b.o.redisBin == "" {
		return nil, errors.New("--ha needs versitygw and redis-server (bench/run installs them as root: ci/install-versitygw.sh, ci/install-redis.sh)")
	}
	if err := b.setupUpstream(); err != nil {
		return nil, err
	}
	if err := h.push(); err != nil {
		return nil, err
	}
	if err := h.start(); err != nil {
		return nil, err
	}
	mp := &haSys{name: haMP, c: newClient()}
	for _, m := range h.reps {
		mp.bases = append(mp.bases, m.bases[0])
		mp.admins = append(mp.admins, m.admin)
	}
	ref := &haSys{name: haRef, bases: h.refs.bases, c: newClient()}
	fs := &haSys{name: haFS, bases: h.fs.bases, admins: []string{h.fs.admin}, c: newClient()}
	solo := &haSys{name: haSolo, bases: h.solo.bases, admins: []string{h.solo.admin}, c: newClient()}

	mStart, mStartErr := h.metrics(mp)
	wall, bytesF, gets := series{}, series{}, series{}
	fills := map[string]series{"upstream": {}, "peer": {}, "bucket": {}, "uncoordinated": {}}
	failed := map[string]int{}
	var coldErrs []string
	warm := series{}
	var warmErrs []string
	lease, leaseDiff := series{}, series{}
	var leaseErrs []string
	for rep := range h.hp.reps {
		logf("--ha rep %d/%d: cold fan-out", rep+1, h.hp.reps)
		for _, s := range order([]*haSys{mp, ref}, rep) {
			h.coldOne(s, rep, wall, bytesF, gets, fills, failed, &coldErrs)
		}
		logf("--ha rep %d/%d: warm throughput", rep+1, h.hp.reps)
		for _, s := range order([]*haSys{mp, ref, fs}, rep) {
			h.warmOne(s, rep, warm, &warmErrs)
		}
		logf("--ha rep %d/%d: cold small blobs one after another", rep+1, h.hp.reps)
		for _, s := range order([]*haSys{mp, solo, ref}, rep) {
			h.leaseOne(s, rep, lease, &leaseErrs)
		}
		if a, c := at(lease, haMP, rep), at(lease, haSolo, rep); a != nil && c != nil {
			leaseDiff.put(haMP, rep, *a-*c)
		}
	}
	// Let the last commits to the bucket finish before anything stops.
	for _, s := range []*haSys{mp, fs, solo} {
		if err := h.settle(s); err != nil {
			b.note("%s at the end: %v", s.name, err)
		}
	}
	if mEnd, err := h.metrics(mp); err == nil && mStartErr == nil {
		h.note("HA replicas over the whole run (fan-out, warm primes, small blobs): fills from upstream %.0f, peer %.0f, bucket %.0f; without the lease %.0f",
			mEnd.upstream-mStart.upstream, mEnd.peer-mStart.peer, mEnd.bucket-mStart.bucket, mEnd.uncoordinated-mStart.uncoordinated)
	}
	// Last, as it leaves each cluster a replica short: one trial per
	// cluster, on its first two replicas.
	bytesK, wholeK, afterK := series{}, series{}, series{}
	var killErrs []string
	logf("--ha: kill -9 the replica fetching a cold %s blob at 50%%", mib(h.hp.killSize))
	mpLeft := &haSys{name: haMP, admins: mp.admins[1:]}
	h.killOne(mp, h.reps[0].p, mpLeft, bytesK, wholeK, afterK, &killErrs)
	h.killOne(ref, h.refs.procs[0], &haSys{name: haRef}, bytesK, wholeK, afterK, &killErrs)
	h.refLogNotes()

	errNote := func(errs []string) string {
		if len(errs) == 0 {
			return ""
		}
		if len(errs) > 6 {
			errs = append(errs[:6:6], fmt.Sprintf("... %d more", len(errs)-6))
		}
		return "errors: " + strings.Join(errs, "; ")
	}
	img := fmt.Sprintf("3 x %s", mib(h.hp.layer))
	fan := fmt.Sprintf("cold fan-out, %d clients over 3 replicas, %s image", h.hp.clients, img)
	b.addRow(&row{Key: "ha_cold_upstream_bytes", Metric: fan + ": upstream bytes per blob", Unit: "x blob",
		series: bytesF, Note: errNote(coldErrs)})
	b.addRow(&row{Key: "ha_cold_upstream_gets", Metric: "  upstream GETs per blob", Unit: "GETs", series: gets})
	b.addRow(&row{Key: "ha_cold_wall", Metric: "  wall time, every pull verified", Unit: "s", series: wall, isTime: true})
	mpF, refF := float64(failed[haMP]), float64(failed[haRef])
	b.addRow(&row{Key: "ha_cold_failed", Metric: fmt.Sprintf("  failed pulls, all reps (of %d)", h.hp.clients*h.hp.reps),
		Unit: "pulls", MP: &mpF, Ref: &refF})
	for _, src := range []string{"upstream", "peer", "bucket"} {
		b.addRow(&row{Key: "ha_cold_fills_" + src, Metric: "  mp fills from " + src + " (3 replicas, config + 3 layers)",
			Unit: "fills", series: fills[src]})
	}
	b.addRow(&row{Key: "ha_cold_fills_uncoordinated", Metric: "  mp fills without the lease", Unit: "fills",
		series: fills["uncoordinated"]})
	b.addRow(&row{Key: "ha_warm_16", Metric: fmt.Sprintf("warm %s blob, 16 clients, one replica", mib(h.hp.layer)), Unit: "MB/s",
		BaseName: haFS, series: warm, Note: errNote(warmErrs)})
	b.addRow(&row{Key: "ha_cold_small_blob", Metric: fmt.Sprintf("cold %d KiB blob, one after another, one replica: per blob",
		h.hp.leaseSize>>10), Unit: "ms", BaseName: haSolo, series: lease, isTime: true, Note: errNote(leaseErrs)})
	kill := fmt.Sprintf("kill -9 at 50%% of a cold %s fill, one trial", mib(h.hp.killSize))
	if b.o.quick {
		kill += " (--quick: 100 MiB in a full run)"
	}
	b.addRow(&row{Key: "ha_kill_upstream_bytes", Metric: kill + ": upstream bytes for the blob", Unit: "x blob",
		series: bytesK, Note: errNote(killErrs)})
	b.addRow(&row{Key: "ha_kill_survivor_whole", Metric: "  other replica's client got the whole verified blob", Unit: "1 = yes",
		series: wholeK})
	b.addRow(&row{Key: "ha_kill_survivor_wait", Metric: "  its last byte, after the kill", Unit: "s", series: afterK, isTime: true})
	b.addRow(&row{Key: "ha_lease_cost", Metric: "  lease cost per cold blob (HA replica - " + haSolo + ")", Unit: "ms",
		series: leaseDiff})

	res := &results{Mode: map[bool]string{true: "ha-quick", false: "ha"}[b.o.quick], Header: h.header(), Rows: b.rows,
		GoalsTitle: "HA checks"}
	res.Goals = h.goals()
	res.Notes = b.notes
	return res, nil
}

// at is series s's value for sys in rep, if measured.
func at(s series, sys string, rep int) *float64 {
	if rep >= len(s[sys]) || math.IsNaN(s[sys][rep]) {
		return nil
	}
	x := s[sys][rep]
	return &x
}

func (h *haBench) header() []string {
	mode := fmt.Sprintf("--ha: %d reps (medians), cold image %s, %d fan-out clients, %d x %d KiB small blobs per rep",
		h.hp.reps, "3 x "+mib(h.hp.layer), h.hp.clients, h.hp.leaseN, h.hp.leaseSize>>10)
	if h.o.quick {
		mode = "QUICK " + mode + " (smoke test, not for comparison)"
	}
	ver := h.o.regVersion
	if ver == "" {
		ver = "?"
	}
	return []string{
		"multiproxy HA (3 replicas, S3 + Redis) vs reference HA (3 distribution " + ver + " proxies, s3 driver + redis blobdescriptor cache) - " +
			time.Now().Format(time.RFC3339),
		mode,
		fmt.Sprintf("machine: %d CPUs, %s; S3: versitygw (posix) on loopback; Redis: redis-server; one upstream registry behind the counting front",
			runtime.NumCPU(), runtime.Version()),
		"values: medians over reps; ratios: median over reps of the ratio within each rep (systems back to back, order alternating)",
		"baseline " + haFS + " = one multiproxy on the filesystem (default storage); " + haSolo + " = one multiproxy on the same S3 without coordination",
		"",
	}
}

// push puts the content in the upstream: per rep a fresh 3-layer image for
// the fan-out and a fresh image of leaseN small layers.
func (h *haBench) push() error {
	t0 := time.Now()
	ps := newPusher(h.upHost)
	sizes := make([]int64, h.hp.leaseN)
	for i := range sizes {
		sizes[i] = h.hp.leaseSize
	}
	for i := range h.hp.reps {
		logf("pushing --ha images for rep %d (3 x %s; %d x %d KiB)", i+1, mib(h.hp.layer), h.hp.leaseN, h.hp.leaseSize>>10)
		ci, err := ps.push(fmt.Sprintf("bench/hacold-%d", i), "v1", []int64{h.hp.layer, h.hp.layer, h.hp.layer}, nil)
		if err != nil {
			return err
		}
		h.coldImg = append(h.coldImg, ci)
		li, err := ps.push(fmt.Sprintf("bench/halease-%d", i), "v1", sizes, nil)
		if err != nil {
			return err
		}
		h.leaseImg = append(h.leaseImg, li)
	}
	// One blob for both clusters' kill trial: their storage is apart, so
	// it is cold for each.
	logf("pushing the --ha kill blob (%s)", mib(h.hp.killSize))
	ki, err := ps.push("bench/hakill", "v1", []int64{h.hp.killSize}, nil)
	if err != nil {
		return err
	}
	h.killImg = ki
	logf("pushed in %.1f s", time.Since(t0).Seconds())
	return nil
}

// start brings up S3, Redis, the HA cluster, the reference cluster and
// the two single multiproxies.
func (h *haBench) start() error {
	var err error
	h.s3, err = startS3Gateway(filepath.Join(h.work, "s3"), h.o.versitygwBin, "mp-ha", "ref-ha")
	if err != nil {
		return err
	}
	h.rd, err = startRedis(filepath.Join(h.work, "redis"), h.o.redisBin)
	if err != nil {
		return err
	}
	logf("versitygw %s (pid %d), redis-server %s (pid %d)", h.s3.Endpoint, h.s3.Pid(), h.rd.Addr, h.rd.Pid())
	peers, err := freePorts(h.hp.replicas)
	if err != nil {
		return err
	}
	for i := range h.hp.replicas {
		extra := mpS3Section(h.s3, "mp-ha", "/multiproxy") + mpCoordSection(h.rd, peers[i], h.hp.leaseTTL)
		m, err := startMultiproxy(filepath.Join(h.work, fmt.Sprintf("mp-ha%d", i)), h.o.mpBin, h.front.url, 1, h.hp.timeout, extra)
		if err != nil {
			return fmt.Errorf("HA replica %d: %w", i, err)
		}
		h.reps = append(h.reps, m)
	}
	h.refs, err = startRefHAFleet(filepath.Join(h.work, "ref-ha"), h.o.regBin, h.front.url, h.hp.replicas, h.s3, "ref-ha", h.rd)
	if err != nil {
		return err
	}
	h.fs, err = startMultiproxy(filepath.Join(h.work, "mp-fs"), h.o.mpBin, h.front.url, 1, h.hp.timeout, "")
	if err != nil {
		return fmt.Errorf("filesystem multiproxy: %w", err)
	}
	h.solo, err = startMultiproxy(filepath.Join(h.work, "mp-s3"), h.o.mpBin, h.front.url, 1, h.hp.timeout,
		mpS3Section(h.s3, "mp-ha", "/multiproxy-solo"))
	if err != nil {
		return fmt.Errorf("uncoordinated S3 multiproxy: %w", err)
	}
	h.note("reference replicas: one bucket and rootdirectory, storage.cache.blobdescriptor: redis (Redis DB 1), storage.redirect.disable: true " +
		"(they serve the bytes themselves, as multiproxy does without storage.s3.redirect), one http.secret")
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.note("load average before the run: %s (other work on this machine makes the figures noisy)", strings.Join(strings.Fields(string(la))[:3], " "))
	}
	logf("HA replicas %v; reference replicas %v; %s %s; %s %s",
		h.reps[0].bases, h.refs.bases, haFS, h.fs.bases[0], haSolo, h.solo.bases[0])
	return nil
}

// haMetrics sums fill counters over a system's multiproxy processes.
type haMetrics struct{ upstream, peer, bucket, uncoordinated, inflight float64 }

func (h *haBench) metrics(s *haSys) (haMetrics, error) {
	var m haMetrics
	for _, admin := range s.admins {
		ss, err := scrape(h.mc, admin)
		if err != nil {
			return m, err
		}
		m.upstream += sumMetric(ss, "multiproxy_fill_sources_total", map[string]string{"source": "upstream"})
		m.peer += sumMetric(ss, "multiproxy_fill_sources_total", map[string]string{"source": "peer"})
		m.bucket += sumMetric(ss, "multiproxy_fill_sources_total", map[string]string{"source": "bucket"})
		m.uncoordinated += sumMetric(ss, "multiproxy_fills_uncoordinated_total", nil)
		m.inflight += sumMetric(ss, "multiproxy_fills_in_flight", nil)
	}
	return m, nil
}

// settle waits until the front has no request in flight and, for
// multiproxy, no process reports a fill (commits to the bucket included),
// so one system's tail does not land on the next one's measurement.
func (h *haBench) settle(s *haSys) error {
	var errs []error
	if err := h.front.quiesce(60 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if len(s.admins) > 0 {
		deadline := time.Now().Add(60 * time.Second)
		for {
			m, err := h.metrics(s)
			if err != nil {
				errs = append(errs, err)
				break
			}
			if m.inflight == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("%v fills still in flight after 60 s", m.inflight))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	flushDirty()
	return errors.Join(errs...)
}

// coldOne: hp.clients clients, client i on replica i mod 3, each pulls the
// rep's fresh image (HEAD tag, manifest, config and layers in parallel,
// every digest verified).
func (h *haBench) coldOne(s *haSys, rep int, wall, bytesF, gets series, fills map[string]series, failed map[string]int, errs *[]string) {
	img := h.coldImg[rep]
	if err := h.settle(s); err != nil {
		*errs = append(*errs, s.name+": before: "+err.Error())
	}
	var g0, b0 int64
	for _, dg := range img.layers {
		g, by := h.front.counts(dg)
		g0, b0 = g0+g, b0+by
	}
	var m0 haMetrics
	var mErr error
	if s.name == haMP {
		m0, mErr = h.metrics(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var mu sync.Mutex
	nFail := 0
	var first error
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range h.hp.clients {
		wg.Go(func() {
			_, _, err := pullImage(ctx, s.c, s.bases[i%len(s.bases)], img.repo, img.tag)
			if err != nil {
				mu.Lock()
				nFail++
				if first == nil {
					first = fmt.Errorf("client %d (replica %d): %w", i, i%len(s.bases), err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	d := time.Since(t0)
	if err := h.settle(s); err != nil {
		*errs = append(*errs, s.name+": after: "+err.Error())
	}
	var g1, b1, size int64
	for i, dg := range img.layers {
		g, by := h.front.counts(dg)
		g1, b1, size = g1+g, b1+by, size+img.sizes[i]
	}
	failed[s.name] += nFail
	if nFail > 0 {
		*errs = append(*errs, fmt.Sprintf("%s rep %d: %d of %d pulls failed, first: %v", s.name, rep+1, nFail, h.hp.clients, first))
	} else {
		wall.put(s.name, rep, d.Seconds())
	}
	bytesF.put(s.name, rep, float64(b1-b0)/float64(size))
	gets.put(s.name, rep, float64(g1-g0)/float64(len(img.layers)))
	if s.name == haMP {
		m1, err := h.metrics(s)
		if err = errors.Join(mErr, err); err != nil {
			*errs = append(*errs, "metrics: "+err.Error())
			return
		}
		fills["upstream"].put(haMP, rep, m1.upstream-m0.upstream)
		fills["peer"].put(haMP, rep, m1.peer-m0.peer)
		fills["bucket"].put(haMP, rep, m1.bucket-m0.bucket)
		fills["uncoordinated"].put(haMP, rep, m1.uncoordinated-m0.uncoordinated)
	}
	logf("  %s: %.2f s, upstream %.2fx per blob, %.1f GETs per blob, %d failed", s.name, d.Seconds(),
		float64(b1-b0)/float64(size), float64(g1-g0)/float64(len(img.layers)), nFail)
}

// warmOne: 16 clients x warmPerConn GETs of a blob the system has already
// served, against its first replica (one GET first, untimed: for mp-fs the
// fill, for the clusters a check that it is there).
func (h *haBench) warmOne(s *haSys, rep int, warm series, errs *[]string) {
	img := h.coldImg[rep]
	dg, size := img.layers[0], img.sizes[0]
	url := blobURL(s.bases[0], img.repo, dg)
	ctx := context.Background()
	if _, _, err := get(ctx, s.c, http.MethodGet, url, "", dg); err != nil {
		*errs = append(*errs, fmt.Sprintf("%s rep %d prime: %v", s.name, rep+1, err))
		return
	}
	if err := h.settle(s); err != nil {
		*errs = append(*errs, s.name+": "+err.Error())
	}
	mbs, _, err := throughput(ctx, s.c, url, size, conc, h.hp.warmPerConn)
	if err != nil {
		*errs = append(*errs, fmt.Sprintf("%s rep %d: %v", s.name, rep+1, err))
		return
	}
	warm.put(s.name, rep, mbs)
	logf("  %s: %.0f MB/s", s.name, mbs)
}

// leaseOne pulls the rep's leaseN small fresh blobs one after another
// through the system's first replica; the value is the mean time per blob.
func (h *haBench) leaseOne(s *haSys, rep int, lease series, errs *[]string) {
	img := h.leaseImg[rep]
	if err := h.settle(s); err != nil {
		*errs = append(*errs, s.name+": "+err.Error())
	}
	var g0 int64
	for _, dg := range img.layers {
		g, _ := h.front.counts(dg)
		g0 += g
	}
	ctx := context.Background()
	t0 := time.Now()
	for _, dg := range img.layers {
		if _, _, err := get(ctx, s.c, http.MethodGet, blobURL(s.bases[0], img.repo, dg), "", dg); err != nil {
			*errs = append(*errs, fmt.Sprintf("%s rep %d: %v", s.name, rep+1, err))
			return
		}
	}
	d := time.Since(t0)
	ms := d.Seconds() * 1000 / float64(len(img.layers))
	lease.put(s.name, rep, ms)
	_ = h.front.quiesce(10 * time.Second)
	var g1 int64
	for _, dg := range img.layers {
		g, _ := h.front.counts(dg)
		g1 += g
	}
	if g1-g0 != int64(len(img.layers)) {
		*errs = append(*errs, fmt.Sprintf("%s rep %d: %d upstream GETs for %d blobs", s.name, rep+1, g1-g0, len(img.layers)))
	}
	logf("  %s: %.2f ms per blob", s.name, ms)
}

// refLogNotes reports what the reference replicas logged about their
// redis blob descriptor cache.
func (h *haBench) refLogNotes() {
	n := 0
	for i := range h.refs.procs {
		b, err := os.ReadFile(filepath.Join(h.work, "ref-ha", fmt.Sprintf("ref%d", i), fmt.Sprintf("ref%d.log", i)))
		if err != nil {
			continue
		}
		n += strings.Count(string(b), "error from cache setting desc")
	}
	if n > 0 {
		h.note("reference: its logs hold %d x \"error from cache setting desc ... cache: empty mediatype on descriptor\" "+
			"(distribution's redis blob descriptor cache refused a descriptor its proxy built for a blob from the remote)", n)
	}
}

// goals: what the HA mode promises, checked on this run.
func (h *haBench) goals() []goal {
	var out goals
	add, info := out.add, out.info
	if r := h.row("ha_cold_upstream_bytes"); r != nil && r.MP != nil {
		worst := 0.0
		for _, v := range r.series.valid(haMP) {
			worst = max(worst, v)
		}
		add("cold fan-out over 3 replicas: upstream bytes = 1x each blob, every rep", yes(worst <= 1.01),
			fmt.Sprintf("multiproxy median %.2fx, worst rep %.2fx; reference median %s", *r.MP, worst, fmtRatio(r.Ref)))
	} else {
		add("cold fan-out over 3 replicas: upstream bytes = 1x each blob, every rep", nil, "not measured")
	}
	if r := h.row("ha_cold_failed"); r != nil && r.MP != nil {
		add("cold fan-out: no failed pull", yes(*r.MP == 0), fmt.Sprintf("multiproxy %.0f, reference %s failed", *r.MP, fmtVal(r.Ref)))
	}
	if r := h.row("ha_cold_fills_uncoordinated"); r != nil && r.MP != nil {
		worst := 0.0
		for _, v := range r.series.valid(haMP) {
			worst = max(worst, v)
		}
		add("every cold fill under the lease (fills_uncoordinated_total unchanged)", yes(worst == 0),
			fmt.Sprintf("most in one rep: %.0f", worst))
	}
	if r := h.row("ha_kill_upstream_bytes"); r != nil && r.MP != nil {
		whole := func(sys string) string {
			if v := at(h.row("ha_kill_survivor_whole").series, sys, 0); v != nil && *v == 1 {
				return "yes"
			}
			return "no"
		}
		add(fmt.Sprintf("replica killed -9 at 50%% of a %s fill: upstream bytes <= 1.1x the blob, the other client whole", mib(h.hp.killSize)),
			yes(*r.MP <= 1.1 && whole(haMP) == "yes"), fmt.Sprintf("multiproxy %.2fx, whole verified blob: %s; reference %s, whole verified blob: %s",
				*r.MP, whole(haMP), fmtRatio(r.Ref), whole(haRef)))
	} else {
		add("replica killed -9 at 50% of a fill: upstream bytes <= 1.1x the blob", nil, "not measured")
	}
	if r := h.row("ha_warm_16"); r != nil && r.MPvsBase != nil {
		info("warm throughput of one HA replica", fmt.Sprintf("%.2fx one multiproxy on the filesystem (%s vs %s MB/s)",
			*r.MPvsBase, fmtVal(r.MP), fmtVal(r.Base)))
	}
	if r := h.row("ha_lease_cost"); r != nil && r.MP != nil {
		info("lease cost", fmt.Sprintf("%.2f ms per cold blob (%s vs %s ms)", *r.MP, fmtVal(h.row("ha_cold_small_blob").MP), fmtVal(h.row("ha_cold_small_blob").Base)))
	}
	return out
}
