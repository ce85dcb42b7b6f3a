package main

// The warm measurements: idle RSS, priming both caches, warm blob
// throughput at 1 and 16 clients, and manifest latency.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

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
