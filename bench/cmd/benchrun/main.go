// Command benchrun measures multiproxy against the reference distribution
// registry proxy (five `registry serve` processes, as the seeds run
// registry:2) and against the machine's ceiling (nginx sendfile, or pulling
// straight from the upstream), all on 127.0.0.1. bench/run builds and runs
// it; see bench/README.md. With --ha (ha.go, hainfra.go) it measures the
// high-availability mode instead: three replicas on one S3 bucket and a
// Redis against three reference proxies on the s3 driver and the redis
// blob descriptor cache.
//
// Everything is measured in one run, repetitions alternating the systems,
// and reported as medians and ratios, since absolute numbers on a shared
// 2-core machine are noisy. It reports; it never fails on a number.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	quick      bool
	soak       bool
	ha         bool
	duration   time.Duration
	reps       int
	mpBin      string
	regBin     string
	regVersion string
	nginxBin   string
	nginxNote  string
	outDir     string
	keep       bool
	profileDir string
	// versitygwBin and redisBin are the S3 gateway and Redis of --ha.
	versitygwBin string
	redisBin     string
}

// params sizes one mode.
type params struct {
	reps          int
	blob          int64 // warm blob and the cold fan-out blob
	layer         int64 // each of the cold image's 3 layers
	idleSettle    time.Duration
	warm1Fetches  int // sequential fetches at 1 client, per rep
	warm16PerConn int // fetches per client at 16 clients, per rep
	latDigest     int // requests per worker, manifest by digest
	latTag        int // requests per worker, tag resolve
	bhCap         time.Duration
	timeout       time.Duration // multiproxy upstream timeout
	wanRate       int64         // bytes/s per upstream blob response in the WAN-like pull
}

const (
	conc      = 16
	upstreams = 5
	smallN    = 8
)

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke mode: 3 reps, 20 MiB blobs, 10 s black-hole cap (< 2 min)")
	flag.BoolVar(&o.soak, "soak", false, "run the recycling soak (issue 4) instead of the benchmark")
	flag.BoolVar(&o.ha, "ha", false, "measure the high-availability mode (3 replicas on S3 + Redis) against 3 reference proxies on S3 + redis cache")
	flag.StringVar(&o.versitygwBin, "versitygw", "", "versitygw binary for --ha (default: from PATH)")
	flag.StringVar(&o.redisBin, "redis-server", "", "redis-server binary for --ha (default: from PATH)")
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "soak duration")
	flag.IntVar(&o.reps, "reps", 0, "repetitions (default 5, --quick 3)")
	flag.StringVar(&o.mpBin, "multiproxy", "", "multiproxy binary")
	flag.StringVar(&o.regBin, "registry", "", "reference distribution registry binary")
	flag.StringVar(&o.regVersion, "registry-version", "", "its version, for the report")
	flag.StringVar(&o.nginxBin, "nginx", "", "nginx binary (empty: no ceiling)")
	flag.StringVar(&o.nginxNote, "nginx-note", "", "why there is no nginx, for the report")
	flag.StringVar(&o.outDir, "out", "bench/out", "where results.json (soak.json, ha.json) goes")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, storage)")
	flag.StringVar(&o.profileDir, "profile-dir", "", "multiproxy has bench/run's pprof hook: profile its measurement windows into this dir")
	flag.Parse()
	if o.mpBin == "" || o.regBin == "" {
		fmt.Fprintln(os.Stderr, "benchrun: --multiproxy and --registry are required (bench/run passes them)")
		os.Exit(2)
	}
	if o.ha && o.soak {
		fmt.Fprintln(os.Stderr, "benchrun: --ha and --soak are separate runs")
		os.Exit(2)
	}
	if o.ha {
		if o.versitygwBin == "" {
			o.versitygwBin, _ = exec.LookPath("versitygw")
		}
		if o.redisBin == "" {
			o.redisBin, _ = exec.LookPath("redis-server")
		}
	}

	// Interrupted: stop what we started, then exit.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "benchrun: %v, stopping servers\n", s)
		stopAll()
		os.Exit(130)
	}()

	code := run(o)
	stopAll()
	os.Exit(code)
}

func run(o options) int {
	start := time.Now()
	p := params{reps: 5, blob: 100 << 20, layer: 100 << 20, idleSettle: 2 * time.Second,
		warm1Fetches: 10, warm16PerConn: 2, latDigest: 100, latTag: 40, bhCap: 40 * time.Second, timeout: 3 * time.Second, wanRate: 50e6}
	if o.quick {
		p = params{reps: 3, blob: 20 << 20, layer: 20 << 20, idleSettle: time.Second,
			warm1Fetches: 10, warm16PerConn: 2, latDigest: 40, latTag: 15, bhCap: 10 * time.Second, timeout: 3 * time.Second, wanRate: 50e6}
	}
	if o.reps > 0 {
		p.reps = o.reps
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		return 1
	}
	work, err := os.MkdirTemp("", "multiproxy-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchrun:", err)
		return 1
	}
	// nginx workers and the reference may run as other users; the content
	// is random test data.
	_ = os.Chmod(work, 0o755)
	defer func() {
		stopAll()
		if o.keep {
			logf("work directory kept: %s", work)
			return
		}
		_ = os.RemoveAll(work)
	}()

	b := &bench{o: o, p: p, work: work}
	defer func() {
		if b.front != nil {
			b.front.close()
		}
	}()
	var res *results
	switch {
	case o.soak:
		res, err = b.runSoak()
	case o.ha:
		res, err = b.runHA()
	default:
		res, err = b.runBench()
	}
	if err != nil {
		// Setup failures are harness failures: there is no table to print.
		fmt.Fprintln(os.Stderr, "benchrun: FAILED:", err)
		fmt.Fprintln(os.Stderr, "benchrun: server logs are in", work, "(kept)")
		o.keep = true
		return 1
	}
	res.Seconds = time.Since(start).Seconds()
	name := "results.json"
	switch {
	case o.soak:
		name = "soak.json"
	case o.ha:
		name = "ha.json"
	}
	path := filepath.Join(o.outDir, name)
	if err := writeJSON(path, res); err != nil {
		res.Notes = append(res.Notes, "could not write JSON: "+err.Error())
	} else {
		res.Notes = append(res.Notes, "JSON: "+path)
	}
	fmt.Println()
	printTable(os.Stdout, res)
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

type bench struct {
	o    options
	p    params
	work string

	up     *proc
	upHost string
	front  *front

	mp    *mpInstance
	refs  *refFleet
	ngx   *proc
	ngURL string // blob URL on nginx

	warm       pushed
	cold16     []pushed
	coldImg    []pushed
	coldImgWAN []pushed
	small      []pushed

	// The token + CDN upstream (tokencdn.go): nil with tcErr saying why.
	tc         *tokenCDN
	tcErr      string
	coldImgCDN []pushed
	tcSides    map[string]*cdnSide

	rows  []*row
	notes []string

	profURL string // the pprof hook of the long-lived multiproxy, if any
}

// mpEnv is the long-lived multiproxy's extra environment: the pprof hook's
// address when profiling.
func (b *bench) mpEnv() []string {
	if b.o.profileDir == "" {
		return nil
	}
	port, err := freePort()
	if err != nil {
		return nil
	}
	b.profURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	return []string{"BENCH_PROF_LISTEN=" + strings.TrimPrefix(b.profURL, "http://"), "BENCH_PROF_DIR=" + b.o.profileDir}
}

func (b *bench) profCall(path, name string) {
	if b.profURL == "" {
		return
	}
	resp, err := http.Post(b.profURL+path+"?name="+name, "text/plain", nil)
	if err != nil {
		b.note("pprof hook %s: %v", path, err)
		b.profURL = ""
		return
	}
	resp.Body.Close()
}

// measure runs fn, under a CPU profile named section-rep when s is
// multiproxy and profiling is on.
func (b *bench) measure(s *sys, section string, rep int, fn func()) {
	if s.name != "multiproxy" || b.profURL == "" {
		fn()
		return
	}
	name := fmt.Sprintf("%s-%d", section, rep)
	b.profCall("/start", name)
	defer b.profCall("/stop", name)
	fn()
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	logf("note: %s", s)
	b.notes = append(b.notes, s)
}

// setupUpstream starts the upstream registry and the counting front.
func (b *bench) setupUpstream() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	dir := filepath.Join(b.work, "upstream")
	up, base, err := startRegistry("upstream", dir, b.o.regBin, upstreamConfig(filepath.Join(dir, "storage"), port), port)
	if err != nil {
		return err
	}
	b.up, b.upHost = up, strings.TrimPrefix(base, "http://")
	b.front, err = startFront(base, nil, nil)
	if err != nil {
		return err
	}
	logf("upstream registry %s (pid %d), counting front %s", base, up.pid(), b.front.url)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

func (b *bench) pushContent() error {
	t0 := time.Now()
	ps := newPusher(b.upHost)
	ngRoot := filepath.Join(b.work, "nginx", "www")
	if err := os.MkdirAll(ngRoot, 0o755); err != nil {
		return err
	}
	var err error
	logf("pushing warm image (1 x %s)", mib(b.p.blob))
	if b.warm, err = ps.push("bench/warm", "v1", []int64{b.p.blob}, map[int]string{0: filepath.Join(ngRoot, "blob")}); err != nil {
		return err
	}
	for i := range b.p.reps {
		logf("pushing cold images for rep %d (1 x %s, 2 x 3 x %s)", i+1, mib(b.p.blob), mib(b.p.layer))
		c, err := ps.push(fmt.Sprintf("bench/cold16-%d", i), "v1", []int64{b.p.blob}, nil)
		if err != nil {
			return err
		}
		b.cold16 = append(b.cold16, c)
		ci, err := ps.push(fmt.Sprintf("bench/coldimg-%d", i), "v1", []int64{b.p.layer, b.p.layer, b.p.layer}, nil)
		if err != nil {
			return err
		}
		b.coldImg = append(b.coldImg, ci)
		ci, err = ps.push(fmt.Sprintf("bench/coldwan-%d", i), "v1", []int64{b.p.layer, b.p.layer, b.p.layer}, nil)
		if err != nil {
			return err
		}
		b.coldImgWAN = append(b.coldImgWAN, ci)
	}
	for i := range smallN {
		s, err := ps.push(fmt.Sprintf("bench/small-%d", i), "v1", []int64{4 << 10}, nil)
		if err != nil {
			return err
		}
		b.small = append(b.small, s)
	}
	logf("pushed in %.1f s", time.Since(t0).Seconds())
	return nil
}

func (b *bench) header() []string {
	mode := fmt.Sprintf("default mode: %d reps (medians), blobs %s, cold image 3 x %s, black-hole cap %s",
		b.p.reps, mib(b.p.blob), mib(b.p.layer), b.p.bhCap)
	if b.o.quick {
		mode = fmt.Sprintf("QUICK MODE (smoke test, not for comparison): %d reps, blobs %s (not 100 MiB), cold image 3 x %s, black-hole cap %s",
			b.p.reps, mib(b.p.blob), mib(b.p.layer), b.p.bhCap)
	}
	ver := b.o.regVersion
	if ver == "" {
		ver = "?"
	}
	return []string{
		"multiproxy vs reference (distribution registry " + ver + " proxy) - " + time.Now().Format(time.RFC3339),
		mode,
		fmt.Sprintf("machine: %d CPUs, %s; multiproxy: 1 process, %d upstreams; reference: %d processes (registry:2 stock config + proxy.remoteurl)",
			runtime.NumCPU(), runtime.Version(), upstreams, upstreams),
		"values: medians over reps; ratios: median over reps of the ratio within each rep (systems measured back to back, order alternating)",
		"mp/ref = multiproxy value / reference value; 'vs base' = speed relative to the baseline (nginx sendfile ceiling, direct pull): rate/base, or base/time",
		"",
	}
}

func (b *bench) runBench() (*results, error) {
	if err := b.setupUpstream(); err != nil {
		return nil, err
	}
	if err := b.pushContent(); err != nil {
		return nil, err
	}
	b.setupTokenCDN()
	defer func() {
		if b.tc != nil {
			b.tc.close()
		}
	}()
	if b.o.nginxBin != "" {
		var base string
		var err error
		b.ngx, base, err = startNginx(filepath.Join(b.work, "nginx"), b.o.nginxBin, filepath.Join(b.work, "nginx", "www"))
		if err != nil {
			b.note("nginx ceiling unavailable: %v", err)
		} else {
			b.ngURL = base + "/blob"
		}
	} else {
		note := b.o.nginxNote
		if note == "" {
			note = "no nginx binary"
		}
		b.note("nginx ceiling skipped: %s", note)
	}

	b.idleRSS()

	logf("starting multiproxy (%d upstreams) and %d reference proxies", upstreams, upstreams)
	var err error
	b.mp, err = startMultiproxy(filepath.Join(b.work, "mp"), b.o.mpBin, b.front.url, upstreams, b.p.timeout, "", b.mpEnv()...)
	if err != nil {
		return nil, err
	}
	b.refs, err = startRefFleet(filepath.Join(b.work, "ref"), b.o.regBin, b.front.url, upstreams)
	if err != nil {
		return nil, err
	}
	mpC, refC := newClient(), newClient()
	systems := []*sys{
		{name: "multiproxy", base: b.mp.bases[0], c: mpC, pids: b.mp.pids},
		{name: "reference", base: b.refs.bases[0], c: refC, pids: func() []int { return []int{b.refs.procs[0].pid()} }},
	}
	if err := b.prime(systems); err != nil {
		return nil, err
	}
	b.warmRun(systems)
	b.latencyRun(systems)
	b.cold16Run(systems)
	b.coldImageRun(systems)
	b.tokenCDNRun()
	b.blackholeRun()

	res := &results{Mode: map[bool]string{true: "quick", false: "default"}[b.o.quick], Header: b.header(), Rows: b.rows,
		GoalsTitle: "Goals (issue 9)"}
	res.Goals = b.goals()
	res.TokenCDN = b.tcSides
	if b.o.profileDir != "" {
		b.note("profiling on (numbers include pprof overhead): CPU profiles of multiproxy's measurement windows in %s", b.o.profileDir)
	}
	res.Notes = b.notes
	return res, nil
}

// sys is one system under test as the client sees it.
type sys struct {
	name string
	base string // base URL; for nginx the blob URL
	c    *http.Client
	pids func() []int
}

func (b *bench) addRow(r *row) *row {
	r.finish()
	b.rows = append(b.rows, r)
	return r
}

func (b *bench) row(key string) *row {
	for _, r := range b.rows {
		if r.Key == key {
			return r
		}
	}
	return nil
}

// order alternates the systems from one repetition to the next.
func order[T any](xs []T, rep int) []T {
	out := make([]T, 0, len(xs))
	for i := range xs {
		out = append(out, xs[(i+rep)%len(xs)])
	}
	return out
}

// idleRSS starts each system fresh per repetition and reads VmRSS after it
// has settled: one multiproxy with 5 upstreams, and 5 reference processes.
func (b *bench) idleRSS() {
	logf("idle RSS: %d reps", b.p.reps)
	ser := series{}
	var errs []string
	for rep := range b.p.reps {
		for _, which := range order([]string{"multiproxy", "reference"}, rep) {
			dir := filepath.Join(b.work, "idle", fmt.Sprintf("%s-%d", which, rep))
			if which == "multiproxy" {
				m, err := startMultiproxy(dir, b.o.mpBin, b.front.url, upstreams, b.p.timeout, "")
				if err != nil {
					errs = append(errs, err.Error())
					continue
				}
				time.Sleep(b.p.idleSettle)
				if v, err := rssMiB(m.pids()); err == nil {
					ser.put("multiproxy", rep, v)
				}
				m.p.stop()
			} else {
				f, err := startRefFleet(dir, b.o.regBin, b.front.url, upstreams)
				if err != nil {
					errs = append(errs, err.Error())
					continue
				}
				time.Sleep(b.p.idleSettle)
				if v, err := rssMiB(f.pids()); err == nil {
					ser.put("reference", rep, v)
				}
				f.stop()
			}
			_ = os.RemoveAll(dir)
		}
	}
	r := &row{Key: "idle_rss", Metric: "idle RSS (mp 1 proc x 5 upstreams; ref sum of 5 procs)", Unit: "MiB",
		series: ser}
	if len(errs) > 0 {
		r.Note = "errors: " + strings.Join(errs, "; ")
	}
	b.addRow(r)
}

// prime fills both caches with the warm blob and the small images, then
// checks that a repeat fetch does not reach the upstream.
func (b *bench) prime(systems []*sys) error {
	ctx := context.Background()
	logf("priming caches")
	for _, s := range systems {
		if _, _, err := get(ctx, s.c, http.MethodGet, blobURL(s.base, b.warm.repo, b.warm.layers[0]), "", b.warm.layers[0]); err != nil {
			return fmt.Errorf("%s: prime warm blob: %w", s.name, err)
		}
		for _, sm := range b.small {
			if _, _, err := get(ctx, s.c, http.MethodHead, manifestURL(s.base, sm.repo, sm.tag), manifestAccept, ""); err != nil {
				return fmt.Errorf("%s: prime tag: %w", s.name, err)
			}
			if _, err := getBody(ctx, s.c, manifestURL(s.base, sm.repo, sm.manifest), sm.manifest); err != nil {
				return fmt.Errorf("%s: prime manifest: %w", s.name, err)
			}
		}
	}
	time.Sleep(time.Second)
	_ = b.front.quiesce(10 * time.Second)
	for _, s := range systems {
		g0, _ := b.front.counts(b.warm.layers[0])
		if _, _, err := get(ctx, s.c, http.MethodGet, blobURL(s.base, b.warm.repo, b.warm.layers[0]), "", b.warm.layers[0]); err != nil {
			return fmt.Errorf("%s: warm check: %w", s.name, err)
		}
		_ = b.front.quiesce(10 * time.Second)
		if g1, _ := b.front.counts(b.warm.layers[0]); g1 != g0 {
			b.note("%s fetched the primed blob from the upstream again: warm numbers include upstream traffic", s.name)
		}
	}
	return nil
}

// warmRun measures warm blob throughput at 1 and 16 clients, CPU per GB,
// and RSS afterwards.
func (b *bench) warmRun(systems []*sys) {
	logf("warm throughput: %d reps", b.p.reps)
	all := append([]*sys(nil), systems...)
	if b.ngURL != "" {
		all = append(all, &sys{name: "nginx", base: b.ngURL, c: newClient(), pids: func() []int { return withChildren(b.ngx.pid()) }})
	}
	t1, t16, cpu := series{}, series{}, series{}
	var errs []string
	ctx := context.Background()
	for rep := range b.p.reps {
		for _, s := range order(all, rep) {
			url := s.base
			if s.name != "nginx" {
				url = blobURL(s.base, b.warm.repo, b.warm.layers[0])
			}
			size := b.warm.sizes[0]
			pids := s.pids()
			c0, err := cpuSeconds(pids)
			if err != nil {
				errs = append(errs, s.name+": "+err.Error())
				continue
			}
			var m1, m16 float64
			var n1, n16 int64
			var err1, err16 error
			b.measure(s, "warm", rep, func() {
				m1, n1, err1 = throughput(ctx, s.c, url, size, 1, b.p.warm1Fetches)
				if err1 == nil {
					m16, n16, err16 = throughput(ctx, s.c, url, size, conc, b.p.warm16PerConn)
				}
			})
			if err1 != nil {
				errs = append(errs, s.name+" 1 client: "+err1.Error())
				continue
			}
			if err16 != nil {
				errs = append(errs, s.name+" 16 clients: "+err16.Error())
				continue
			}
			c1, err := cpuSeconds(pids)
			if err != nil {
				errs = append(errs, s.name+": "+err.Error())
				continue
			}
			t1.put(s.name, rep, m1)
			t16.put(s.name, rep, m16)
			cpu.put(s.name, rep, (c1-c0)/(float64(n1+n16)/1e9))
		}
	}
	note := ""
	if len(errs) > 0 {
		note = "errors: " + strings.Join(errs, "; ")
	}
	mk := func(key, metric, unit string, m series, isTime bool) {
		r := &row{Key: key, Metric: metric, Unit: unit, series: m, Note: note, isTime: isTime}
		if b.ngURL != "" {
			r.BaseName = "nginx"
		}
		b.addRow(r)
	}
	mk("warm_1", fmt.Sprintf("warm %s blob, 1 client", mib(b.p.blob)), "MB/s", t1, false)
	mk("warm_16", fmt.Sprintf("warm %s blob, 16 clients", mib(b.p.blob)), "MB/s", t16, false)
	mk("cpu_per_gb", "CPU per GB served warm (utime+stime)", "s/GB", cpu, true)
	// CPU is a cost, lower is better: the baseline column compares it the
	// way times are compared (nginx / value).

	b.profCall("/heap", "after-warm")
	mpR, err1 := rssMiB(b.mp.pids())
	refR, err2 := rssMiB([]int{b.refs.procs[0].pid()})
	refAll, err3 := rssMiB(b.refs.pids())
	if err := errors.Join(err1, err2, err3); err != nil {
		b.note("RSS after warm run: %v", err)
		return
	}
	b.addRow(&row{Key: "rss_after_warm", Metric: "RSS after warm run (serving process)", Unit: "MiB", MP: &mpR, Ref: &refR,
		Note: fmt.Sprintf("%d blob GETs per system; whole deployment: mp %.1f MiB vs 5 reference processes %.1f MiB",
			b.p.reps*(b.p.warm1Fetches+conc*b.p.warm16PerConn)+2, mpR, refAll)})
}

func (b *bench) latencyRun(systems []*sys) {
	logf("manifest latency: %d reps", b.p.reps)
	d50, d99, t50, t99 := series{}, series{}, series{}, series{}
	var errs []string
	ctx := context.Background()
	for rep := range b.p.reps {
		for _, s := range order(systems, rep) {
			b.measure(s, "manifest-digest", rep, func() { b.latencyOne(ctx, s, rep, d50, d99, &errs) })
			b.measure(s, "tag-resolve", rep, func() { b.tagOne(ctx, s, rep, t50, t99, &errs) })
		}
	}
	b.latencyRows(d50, d99, t50, t99, errs)
}

func (b *bench) latencyOne(ctx context.Context, s *sys, rep int, d50, d99 series, errs *[]string) {
	p50, p99, err := latency(ctx, s.c, conc, b.p.latDigest, func(i int) (string, string) {
		sm := b.small[i%len(b.small)]
		return http.MethodGet, manifestURL(s.base, sm.repo, sm.manifest)
	})
	if err != nil {
		*errs = append(*errs, s.name+" by digest: "+err.Error())
	} else {
		d50.put(s.name, rep, p50)
		d99.put(s.name, rep, p99)
	}
}

func (b *bench) tagOne(ctx context.Context, s *sys, rep int, t50, t99 series, errs *[]string) {
	p50, p99, err := latency(ctx, s.c, conc, b.p.latTag, func(i int) (string, string) {
		sm := b.small[i%len(b.small)]
		return http.MethodHead, manifestURL(s.base, sm.repo, sm.tag)
	})
	if err != nil {
		*errs = append(*errs, s.name+" tag: "+err.Error())
	} else {
		t50.put(s.name, rep, p50)
		t99.put(s.name, rep, p99)
	}
}

func (b *bench) latencyRows(d50, d99, t50, t99 series, errs []string) {
	note := ""
	if len(errs) > 0 {
		note = "errors: " + strings.Join(errs, "; ")
	}
	for _, x := range []struct {
		key, metric string
		m           series
	}{
		{"manifest_digest_p50", "warm manifest GET by digest p50 (16 conc)", d50},
		{"manifest_digest_p99", "warm manifest GET by digest p99 (16 conc)", d99},
		{"tag_resolve_p50", "tag resolve HEAD p50 (16 conc, revalidates upstream)", t50},
		{"tag_resolve_p99", "tag resolve HEAD p99 (16 conc, revalidates upstream)", t99},
	} {
		b.addRow(&row{Key: x.key, Metric: x.metric, Unit: "ms", series: x.m, Note: note, isTime: true})
	}
}

// cold16Run: 16 concurrent clients ask one proxy for one uncached blob.
// The upstream's GETs and body bytes for that blob are counted at the front.
func (b *bench) cold16Run(systems []*sys) {
	logf("cold fan-out (16 clients, 1 uncached blob): %d reps", b.p.reps)
	wall, factor, gets := series{}, series{}, series{}
	var errs []string
	ctx := context.Background()
	for rep := range b.p.reps {
		img := b.cold16[rep]
		dg := img.layers[0]
		for _, s := range order(systems, rep) {
			if err := b.front.quiesce(30 * time.Second); err != nil {
				errs = append(errs, err.Error())
			}
			flushDirty()
			g0, b0 := b.front.counts(dg)
			var d time.Duration
			var err error
			b.measure(s, "cold16", rep, func() { d, err = fanout(ctx, s.c, blobURL(s.base, img.repo, dg), dg, conc) })
			if err != nil {
				errs = append(errs, s.name+": "+err.Error())
			}
			if err := b.front.quiesce(60 * time.Second); err != nil {
				errs = append(errs, err.Error())
			}
			g1, b1 := b.front.counts(dg)
			if err == nil {
				wall.put(s.name, rep, d.Seconds())
			}
			factor.put(s.name, rep, float64(b1-b0)/float64(img.sizes[0]))
			gets.put(s.name, rep, float64(g1-g0))
		}
	}
	note := ""
	if len(errs) > 0 {
		note = "errors: " + strings.Join(errs, "; ")
	}
	b.addRow(&row{Key: "cold16_upstream_bytes", Metric: fmt.Sprintf("cold 16 clients x 1 %s blob: upstream bytes", mib(b.p.blob)),
		Unit: "x blob", series: factor, Note: note})
	b.addRow(&row{Key: "cold16_upstream_gets", Metric: "cold 16 clients x 1 blob: upstream GETs of it", Unit: "GETs",
		series: gets})
	b.addRow(&row{Key: "cold16_wall", Metric: "cold 16 clients x 1 blob: wall time, all verified", Unit: "s",
		series: wall, isTime: true})
}

// coldImageRun pulls a fresh 3-layer image per rep through each proxy and
// straight from the upstream (through the same counting front).
func (b *bench) coldImageRun(systems []*sys) {
	all := append(append([]*sys(nil), systems...), &sys{name: "direct", base: b.front.url, c: newClient()})
	for _, wan := range []bool{false, true} {
		imgs, section, key := b.coldImg, "coldimg", "cold_image"
		metric := fmt.Sprintf("cold pull of 3 x %s image", mib(b.p.layer))
		note := "direct = the same pull from the upstream registry through the counting front; layers in parallel, every digest verified"
		if wan {
			imgs, section, key = b.coldImgWAN, "coldimg-wan", "cold_image_wan"
			metric += fmt.Sprintf(", upstream at %.0f MB/s per connection", float64(b.p.wanRate)/1e6)
			note = "the front paces each upstream blob body like a WAN link, so the proxy's own work can overlap the transfer"
			b.front.rate.Store(b.p.wanRate)
		}
		logf("%s: %d reps", metric, b.p.reps)
		tm, cpu := series{}, series{}
		var errs []string
		ctx := context.Background()
		for rep := range b.p.reps {
			img := imgs[rep]
			for _, s := range order(all, rep) {
				_ = b.front.quiesce(30 * time.Second)
				flushDirty()
				var d time.Duration
				var err error
				var c0 float64
				if s.pids != nil {
					c0, _ = cpuSeconds(s.pids())
				}
				b.measure(s, section, rep, func() { d, _, err = pullImage(ctx, s.c, s.base, img.repo, img.tag) })
				if err != nil {
					errs = append(errs, s.name+": "+err.Error())
					continue
				}
				tm.put(s.name, rep, d.Seconds())
				if s.pids != nil {
					if c1, err := cpuSeconds(s.pids()); err == nil {
						cpu.put(s.name, rep, c1-c0)
					}
				}
			}
		}
		b.front.rate.Store(0)
		if len(errs) > 0 {
			note += "; errors: " + strings.Join(errs, "; ")
		}
		b.addRow(&row{Key: key, Metric: metric, Unit: "s", BaseName: "direct", series: tm, Note: note, isTime: true})
		if !wan {
			b.addRow(&row{Key: "cold_image_cpu", Metric: fmt.Sprintf("  proxy CPU (utime+stime) for that cold 3 x %s pull", mib(b.p.layer)), Unit: "CPU-s",
				series: cpu, isTime: true})
		}
	}
}

// flushDirty writes dirty pages back before a cold measurement, so the
// writeback of earlier fills does not land on whichever system runs next.
func flushDirty() { syscall.Sync() }

// blackholeRun: the upstream accepts and never answers; how long does a
// cached tag take? Reference requests only wait, so its repetitions run
// concurrently (each capped) while multiproxy's run one after another.
func (b *bench) blackholeRun() {
	logf("black-holed upstream: %d reps (reference capped at %s)", b.p.reps, b.p.bhCap)
	sm := b.small[0]
	type answer struct {
		d      time.Duration
		status int
		stale  bool
		capped bool
		err    error
	}
	ask := func(c *http.Client, base string) answer {
		ctx, cancel := context.WithTimeout(context.Background(), b.p.bhCap)
		defer cancel()
		t0 := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, manifestURL(base, sm.repo, sm.tag), nil)
		req.Header.Set("Accept", manifestAccept)
		resp, err := c.Do(req)
		if err == nil {
			_, err = drain(resp.Body, nil)
			resp.Body.Close()
		}
		a := answer{d: time.Since(t0), err: err}
		if resp != nil {
			a.status = resp.StatusCode
			a.stale = resp.Header.Get("Warning") != ""
		}
		if err != nil && ctx.Err() != nil {
			a.capped = true
		}
		return a
	}
	mpC, refC := newClient(), newClient()
	// Warm the connections so the black hole, not a dial, is what is timed.
	for _, x := range []struct {
		c    *http.Client
		base string
	}{{mpC, b.mp.bases[0]}, {refC, b.refs.bases[0]}} {
		if a := ask(x.c, x.base); a.err != nil || a.status != 200 {
			b.note("black-hole test: tag not servable before the test: %v %d", a.err, a.status)
		}
	}
	b.front.setBlackhole(true)
	refAns := make([]answer, b.p.reps)
	var wg sync.WaitGroup
	for i := range b.p.reps {
		wg.Go(func() { refAns[i] = ask(refC, b.refs.bases[0]) })
	}
	var mpAns []answer
	for range b.p.reps {
		mpAns = append(mpAns, ask(mpC, b.mp.bases[0]))
	}
	wg.Wait()
	b.front.setBlackhole(false)

	summarize := func(as []answer) ([]float64, string, bool) {
		var ds []float64
		capped := false
		codes := map[string]int{}
		for _, a := range as {
			ds = append(ds, a.d.Seconds())
			switch {
			case a.capped:
				capped = true
				codes["no answer"]++
			case a.err != nil:
				codes["error: "+a.err.Error()]++
			case a.stale:
				codes[fmt.Sprintf("%d+Warning", a.status)]++
			default:
				codes[fmt.Sprint(a.status)]++
			}
		}
		var parts []string
		for k, v := range codes {
			parts = append(parts, fmt.Sprintf("%d x %s", v, k))
		}
		return ds, strings.Join(parts, ", "), capped
	}
	mpD, mpCodes, mpCapped := summarize(mpAns)
	refD, refCodes, refCapped := summarize(refAns)
	r := &row{Key: "blackhole", Metric: "cached tag, upstream black-holed: time to answer", Unit: "s",
		series: series{"multiproxy": mpD, "reference": refD}, isTime: true,
		Note: fmt.Sprintf("multiproxy timeout %s: %s; reference (no timeout, client capped at %s): %s",
			b.p.timeout, mpCodes, b.p.bhCap, refCodes)}
	if refCapped {
		r.RefText = fmt.Sprintf(">%s", b.p.bhCap)
	}
	if mpCapped {
		r.Note += "; multiproxy hit the cap"
	}
	r.finish()
	if refCapped {
		r.Ratio = nil // a lower bound only
	}
	b.rows = append(b.rows, r)
}

// goals evaluates issue 9's goals against this run.
func (b *bench) goals() []goal {
	var out goals
	add := out.add

	if r := b.row("idle_rss"); r != nil && r.MP != nil && r.Ref != nil {
		add("idle RSS <= 1/3 of the reference's five processes", yes(*r.MP <= *r.Ref/3),
			fmt.Sprintf("%.1f MiB vs %.1f MiB (limit %.1f MiB, ratio %.2fx)", *r.MP, *r.Ref, *r.Ref/3, *r.Ratio))
	} else {
		add("idle RSS <= 1/3 of the reference's five processes", nil, "not measured")
	}

	{
		var parts []string
		ok := true
		measured := false
		for _, k := range []string{"warm_1", "warm_16"} {
			r := b.row(k)
			if r == nil || r.Ratio == nil {
				continue
			}
			measured = true
			s := fmt.Sprintf("%s: %.2fx reference", strings.TrimPrefix(k, "warm_")+" client(s)", *r.Ratio)
			ok = ok && *r.Ratio >= 1.0
			if r.MPvsBase != nil {
				s += fmt.Sprintf(", %.2fx nginx", *r.MPvsBase)
				ok = ok && *r.MPvsBase >= 0.8
			} else {
				s += ", nginx not measured"
			}
			parts = append(parts, s)
		}
		var res *bool
		if measured {
			res = yes(ok)
		}
		add("warm throughput >= 1.0x reference and >= 0.8x nginx", res, strings.Join(parts, "; "))
	}

	if r := b.row("cold16_upstream_bytes"); r != nil && r.MP != nil {
		ref := "n/a"
		if r.Ref != nil {
			ref = fmt.Sprintf("%.2fx", *r.Ref)
		}
		add("cold dedup: upstream bytes = 1x the blob", yes(*r.MP <= 1.01),
			fmt.Sprintf("multiproxy %.2fx, reference %s (16 concurrent clients)", *r.MP, ref))
	} else {
		add("cold dedup: upstream bytes = 1x the blob", nil, "not measured")
	}

	if r := b.row("cold_image"); r != nil && r.MPvsBase != nil {
		ref := "n/a"
		if r.RefvsBase != nil {
			ref = fmt.Sprintf("%.2fx", *r.RefvsBase)
		}
		detail := fmt.Sprintf("multiproxy %.2fx, reference %s (%.2f s / %s s / direct %.2f s)", *r.MPvsBase, ref, *r.MP, fmtVal(r.Ref), *r.Base)
		if w := b.row("cold_image_wan"); w != nil && w.MPvsBase != nil {
			detail += fmt.Sprintf("; with a %.0f MB/s upstream: multiproxy %.2fx, reference %s",
				float64(b.p.wanRate)/1e6, *w.MPvsBase, fmtRatio(w.RefvsBase))
		}
		add("cold pull >= 0.85x the speed of pulling straight from the upstream (unpaced loopback)", yes(*r.MPvsBase >= 0.85), detail)
	} else {
		add("cold pull >= 0.85x the speed of pulling straight from the upstream", nil, "not measured")
	}

	if r := b.row("cpu_per_gb"); r != nil && r.Ratio != nil {
		add("CPU per GB served warm <= 0.8x the reference", yes(*r.Ratio <= 0.8),
			fmt.Sprintf("%.3f vs %.3f CPU-s/GB (%.2fx)", *r.MP, *r.Ref, *r.Ratio))
	} else {
		add("CPU per GB served warm <= 0.8x the reference", nil, "not measured")
	}

	out = append(out, b.tokenCDNGoal())

	limit := b.p.timeout.Seconds() + 0.5
	if r := b.row("blackhole"); r != nil && r.MP != nil {
		ok := *r.MP <= limit && !strings.Contains(r.Note, "hit the cap")
		ref := fmtVal(r.Ref) + " s"
		if r.RefText != "" {
			ref = r.RefText
		}
		add(fmt.Sprintf("black-holed upstream answer <= timeout + 0.5 s (%.1f s)", limit), yes(ok),
			fmt.Sprintf("multiproxy %.2f s, reference %s", *r.MP, ref))
	} else {
		add("black-holed upstream answer <= timeout + 0.5 s", nil, "not measured")
	}
	return out
}
