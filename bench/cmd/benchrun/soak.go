package main

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The soak of issue 4: a mixed pull workload for a while, with multiproxy's
// recycling on when its config accepts recycle.interval, sampling RSS of
// both systems every few seconds. Both systems get the same paced workload
// at the same time, spread over their 5 upstreams.

type soakSample struct {
	T   float64 `json:"t_s"`
	MP  float64 `json:"multiproxy_mib"`
	Ref float64 `json:"reference_mib"`
}

type soakSide struct {
	Ops        int64    `json:"ops"`
	Errors     int64    `json:"errors"`
	FirstError string   `json:"first_error,omitempty"`
	FirstThird *float64 `json:"first_third_median_mib"`
	LastThird  *float64 `json:"last_third_median_mib"`
	GrowthPct  *float64 `json:"growth_pct"`
	Peak       float64  `json:"peak_mib"`
}

type soakOut struct {
	Duration  string       `json:"duration"`
	Recycling string       `json:"recycling"`
	Every     float64      `json:"sample_every_s"`
	WarmUp    float64      `json:"warm_up_s"`
	Samples   []soakSample `json:"samples"`
	MP        soakSide     `json:"multiproxy"`
	Ref       soakSide     `json:"reference"`
}

type soakContent struct {
	warm []pushed
	big  pushed
	cold []pushed
}

func (b *bench) pushSoak() (*soakContent, error) {
	t0 := time.Now()
	ps := newPusher(b.upHost)
	sc := &soakContent{}
	for i := range 6 {
		p, err := ps.push(fmt.Sprintf("soak/warm-%d", i), "v1", []int64{256 << 10, 2 << 20}, nil)
		if err != nil {
			return nil, err
		}
		sc.warm = append(sc.warm, p)
	}
	var err error
	if sc.big, err = ps.push("soak/big", "v1", []int64{32 << 20}, nil); err != nil {
		return nil, err
	}
	// One cold pull per second per system; the pool wraps around (and turns
	// warm) only on very long soaks.
	n := max(20, min(900, int(b.o.duration/time.Second)))
	logf("pushing soak content: 6 warm images, a 32 MiB blob, %d cold images", n)
	for i := range n {
		p, err := ps.push(fmt.Sprintf("soak/cold-%d", i), "v1", []int64{512 << 10}, nil)
		if err != nil {
			return nil, err
		}
		sc.cold = append(sc.cold, p)
	}
	logf("pushed in %.1f s", time.Since(t0).Seconds())
	return sc, nil
}

func (b *bench) runSoak() (*results, error) {
	if err := b.setupUpstream(); err != nil {
		return nil, err
	}
	sc, err := b.pushSoak()
	if err != nil {
		return nil, err
	}
	out := &soakOut{Duration: b.o.duration.String()}

	interval := min(time.Minute, max(10*time.Second, b.o.duration/10))
	extra := fmt.Sprintf("recycle:\n  interval: %s\n", interval)
	ports, err := freePorts(upstreams + 1)
	if err != nil {
		return nil, err
	}
	probe := multiproxyConfig(filepath.Join(b.work, "probe"), ports[upstreams], ports[:upstreams], b.front.url, b.p.timeout, extra)
	if ok, msg := mpConfigAccepted(b.o.mpBin, b.work, probe); ok {
		out.Recycling = fmt.Sprintf("on (recycle.interval %s)", interval)
	} else {
		out.Recycling = "recycling not available (multiproxy config check: " + strings.ReplaceAll(msg, "\n", " ") + "); soak ran without it"
		extra = ""
	}
	logf("soak %s, multiproxy recycling: %s", b.o.duration, out.Recycling)

	b.mp, err = startMultiproxy(filepath.Join(b.work, "mp"), b.o.mpBin, b.front.url, upstreams, b.p.timeout, extra, b.mpEnv()...)
	if err != nil {
		return nil, err
	}
	b.refs, err = startRefFleet(filepath.Join(b.work, "ref"), b.o.regBin, b.front.url, upstreams)
	if err != nil {
		return nil, err
	}

	every := 5 * time.Second
	if b.o.duration < 3*time.Minute {
		every = 2 * time.Second
	}
	out.Every = every.Seconds()
	ctx, cancel := context.WithTimeout(context.Background(), b.o.duration)
	defer cancel()

	type side struct {
		name  string
		bases []string
		c     *http.Client
		ops   atomic.Int64
		errs  atomic.Int64
		mu    sync.Mutex
		first string
	}
	sides := []*side{
		{name: "multiproxy", bases: b.mp.bases, c: newClient()},
		{name: "reference", bases: b.refs.bases, c: newClient()},
	}
	fail := func(s *side, err error) {
		if ctx.Err() != nil {
			return // the soak ended mid-request
		}
		s.errs.Add(1)
		s.mu.Lock()
		if s.first == "" {
			s.first = err.Error()
		}
		s.mu.Unlock()
	}

	var wg sync.WaitGroup
	for _, s := range sides {
		for w := range 4 {
			wg.Go(func() {
				rng := mrand.New(mrand.NewPCG(uint64(w), 42))
				for ctx.Err() == nil {
					base := s.bases[rng.IntN(len(s.bases))]
					img := sc.warm[rng.IntN(len(sc.warm))]
					var err error
					switch k := rng.IntN(100); {
					case k < 45:
						_, _, err = pullImage(ctx, s.c, base, img.repo, img.tag)
					case k < 65:
						_, err = getBody(ctx, s.c, manifestURL(base, img.repo, img.manifest), img.manifest)
					case k < 85:
						_, _, err = get(ctx, s.c, http.MethodHead, manifestURL(base, img.repo, img.tag), manifestAccept, "")
					default:
						_, _, err = get(ctx, s.c, http.MethodGet, blobURL(base, sc.big.repo, sc.big.layers[0]), "", "")
					}
					s.ops.Add(1)
					if err != nil {
						fail(s, err)
					}
					sleepCtx(ctx, 25*time.Millisecond)
				}
			})
		}
		wg.Go(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				img := sc.cold[i%len(sc.cold)]
				if _, _, err := pullImage(ctx, s.c, s.bases[i%len(s.bases)], img.repo, img.tag); err != nil {
					fail(s, err)
				}
				s.ops.Add(1)
			}
		})
	}

	start := time.Now()
	sample := func() {
		mp, err1 := rssMiB(b.mp.pids())
		ref, err2 := rssMiB(b.refs.pids())
		if err1 != nil || err2 != nil {
			return
		}
		out.Samples = append(out.Samples, soakSample{T: time.Since(start).Seconds(), MP: mp, Ref: ref})
	}
	sample()
	tick := time.NewTicker(every)
	lastLog := time.Now()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			sample()
			if time.Since(lastLog) >= 30*time.Second {
				lastLog = time.Now()
				s := out.Samples[len(out.Samples)-1]
				logf("soak t=%3.0fs  multiproxy %.1f MiB  reference(5) %.1f MiB  ops %d/%d  errors %d/%d",
					s.T, s.MP, s.Ref, sides[0].ops.Load(), sides[1].ops.Load(), sides[0].errs.Load(), sides[1].errs.Load())
			}
		}
	}
	tick.Stop()
	wg.Wait()
	sample()

	out.WarmUp = b.o.duration.Seconds() / 5
	for i, s := range sides {
		vals := func(x soakSample) float64 { return x.MP }
		dst := &out.MP
		if i == 1 {
			vals = func(x soakSample) float64 { return x.Ref }
			dst = &out.Ref
		}
		dst.Ops, dst.Errors, dst.FirstError = s.ops.Load(), s.errs.Load(), s.first
		var after []float64
		for _, x := range out.Samples {
			dst.Peak = max(dst.Peak, vals(x))
			if x.T >= out.WarmUp {
				after = append(after, vals(x))
			}
		}
		if len(after) >= 3 {
			third := len(after) / 3
			dst.FirstThird = median(after[:third])
			dst.LastThird = median(after[len(after)-third:])
			g := (*dst.LastThird / *dst.FirstThird - 1) * 100
			dst.GrowthPct = &g
		}
	}

	res := &results{Mode: "soak", Soak: out, GoalsTitle: "Goal (issue 4)"}
	res.Header = []string{
		"multiproxy vs reference (distribution registry " + b.o.regVersion + " proxy): RSS soak (issue 4) - " + time.Now().Format(time.RFC3339),
		fmt.Sprintf("duration %s, RSS sampled every %.0f s; warm-up %.0f s; machine: %d CPUs, %s", out.Duration, out.Every, out.WarmUp, runtime.NumCPU(), runtime.Version()),
		"workload per system: 4 paced workers (image pulls, manifests by digest, tag HEADs, a 32 MiB blob) over 5 upstreams + 1 cold image pull/s",
		"multiproxy: 1 process, 5 upstreams; reference: sum of 5 processes",
		"",
	}
	g := goal{Goal: "soak: multiproxy RSS growth after warm-up <= 10%", Status: "n/a", Detail: "too few samples"}
	if out.MP.GrowthPct != nil {
		g.Status = map[bool]string{true: "PASS", false: "FAIL"}[*out.MP.GrowthPct <= 10]
		g.Detail = fmt.Sprintf("multiproxy %+.1f%%, reference %s; %s", *out.MP.GrowthPct, pct(out.Ref.GrowthPct), out.Recycling)
	}
	res.Goals = []goal{g}
	res.Notes = b.notes
	return res, nil
}

func pct(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%+.1f%%", *v)
}

func printSoak(w io.Writer, s *soakOut) {
	fmt.Fprintf(w, "RSS curve (MiB), recycling: %s\n", s.Recycling)
	fmt.Fprintf(w, "%8s | %12s | %14s\n", "t (s)", "multiproxy", "reference (5)")
	step := max(1, len(s.Samples)/30)
	for i, x := range s.Samples {
		if i%step != 0 && i != len(s.Samples)-1 {
			continue
		}
		mark := ""
		if x.T < s.WarmUp {
			mark = "  (warm-up)"
		}
		fmt.Fprintf(w, "%8.0f | %12.1f | %14.1f%s\n", x.T, x.MP, x.Ref, mark)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-38s | %12s | %14s\n", "", "multiproxy", "reference (5)")
	line := func(name string, f func(soakSide) string) {
		fmt.Fprintf(w, "%-38s | %12s | %14s\n", name, f(s.MP), f(s.Ref))
	}
	line("median RSS, first third after warm-up", func(x soakSide) string { return fmtVal(x.FirstThird) })
	line("median RSS, last third", func(x soakSide) string { return fmtVal(x.LastThird) })
	line("growth after warm-up", func(x soakSide) string { return pct(x.GrowthPct) })
	line("peak RSS", func(x soakSide) string { return fmt.Sprintf("%.1f", x.Peak) })
	line("operations", func(x soakSide) string { return fmt.Sprint(x.Ops) })
	line("failed operations", func(x soakSide) string { return fmt.Sprint(x.Errors) })
	for _, x := range []struct {
		n string
		s soakSide
	}{{"multiproxy", s.MP}, {"reference", s.Ref}} {
		if x.s.FirstError != "" {
			fmt.Fprintf(w, "  first %s error: %s\n", x.n, x.s.FirstError)
		}
	}
}
