package main

import (
	"fmt"
	"strings"
)

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
