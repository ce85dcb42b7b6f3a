// Command benchrun measures multiproxy against the reference distribution
// registry proxy (five `registry serve` processes, as the seeds run
// registry:2) and against the machine's ceiling (nginx sendfile, or pulling
// straight from the upstream), all on 127.0.0.1. bench/run builds and runs
// it; see bench/README.md. The measurements are in warm.go, cold.go and
// tokencdn.go, their goals in goals.go. With --ha (ha.go, hakill.go,
// hainfra.go) it measures the
// high-availability mode instead: three replicas on one S3 bucket and a
// Redis against three reference proxies on the s3 driver and the redis
// blob descriptor cache.
//
// Everything is measured in one run, repetitions alternating the systems,
// and reported as medians and ratios, since absolute numbers on a shared
// 2-core machine are noisy. It reports; it never fails on a number.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
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
