package main

// The cold measurements: 16 clients on one uncached blob, a fresh image
// per repetition, and a cached tag while the upstream black-holes.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

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
