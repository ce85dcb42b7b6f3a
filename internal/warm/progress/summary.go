package progress

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// This file: what ends the output: the table of every image (a warm) or the
// plan by upstream (a dry run), and the counts the exit status comes from.

// Result counts the images by how they ended.
type Result struct {
	Images, Cached, Failed, Skipped, Unfinished int
	// Planned are the images the server would warm (a dry run).
	Planned int
	// Summary says whether the server's summary arrived.
	Summary bool
}

// AllCached reports whether every requested image is in the cache.
func (r Result) AllCached() bool {
	return r.Summary && r.Images > 0 && r.Cached == r.Images
}

// Result counts the images by how they ended.
func (d *Display) Result() Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := Result{Images: len(d.order), Summary: d.summary != nil}
	for _, im := range d.order {
		switch im.state {
		case cached:
			r.Cached++
		case failed:
			r.Failed++
		case skipped:
			r.Skipped++
		default:
			r.Unfinished++
		}
		if im.state == planned {
			r.Planned++
		}
	}
	return r
}

// WriteSummary writes the table of every image and how it ended, then
// the counts.
func (d *Display) WriteSummary(w io.Writer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tUPSTREAM\tSTATUS\tSIZE\tDETAIL")
	var ncached, nfailed, nskipped, nunfinished int
	for _, im := range d.order {
		up, sz, detail := dash(im.upstream), "-", im.reason
		switch im.state {
		case cached:
			ncached++
			sz = size(im.bytes)
		case failed:
			nfailed++
		case skipped:
			nskipped++
		default:
			// "unfinished" says it all; why is the command's error.
			nunfinished++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", im.ref, up, im.state, sz, detail)
	}
	_ = tw.Flush()
	var b strings.Builder
	// An empty DETAIL leaves the padding of SIZE at the end of a line.
	// On a terminal a long DETAIL is cut rather than wrapped into the
	// next row: the whole reason scrolled by above.
	for _, l := range strings.SplitAfter(table.String(), "\n") {
		if l == "" {
			continue
		}
		l = strings.TrimRight(l, " \n")
		if d.opt.Live {
			l = cut(l, d.width()-1)
		}
		b.WriteString(l + "\n")
	}
	fmt.Fprintf(&b, "\n%d of %d images cached", ncached, len(d.order))
	for _, c := range []struct {
		n    int
		what string
	}{{nfailed, "failed"}, {nskipped, "skipped"}, {nunfinished, "unfinished"}} {
		if c.n > 0 {
			fmt.Fprintf(&b, ", %d %s", c.n, c.what)
		}
	}
	if s := d.summary; s != nil {
		fmt.Fprintf(&b, "; %s in %s", size(s.Bytes), duration(time.Duration(s.Seconds*float64(time.Second))))
	}
	for _, s := range d.stopped {
		fmt.Fprintf(&b, "\nstopped %s: %s", s.Upstream, s.Reason)
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// WritePlan writes what a dry run answered: the images by upstream, in
// the order the upstreams first appear, then the skipped ones.
func (d *Display) WritePlan(w io.Writer, platforms []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ups []string
	by := map[string][]*image{}
	var skip []*image
	n := 0
	for _, im := range d.order {
		switch {
		case im.state == skipped:
			skip = append(skip, im)
		case im.upstream != "":
			if _, ok := by[im.upstream]; !ok {
				ups = append(ups, im.upstream)
			}
			by[im.upstream] = append(by[im.upstream], im)
			n++
		}
	}
	plat := "the server's default (warm.platforms, else linux/amd64)"
	if len(platforms) > 0 {
		plat = strings.Join(platforms, ", ")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "would warm %s for %s\n", plural(n, "image"), plat)
	for _, u := range ups {
		fmt.Fprintf(&b, "\n%s (%s)\n", u, plural(len(by[u]), "image"))
		for _, im := range by[u] {
			fmt.Fprintf(&b, "  %s\n", im.ref)
		}
	}
	if len(skip) > 0 {
		fmt.Fprintf(&b, "\nskipped (%s)\n", plural(len(skip), "image"))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, im := range skip {
			fmt.Fprintf(tw, "  %s\t%s\n", im.ref, im.reason)
		}
		_ = tw.Flush()
	}
	var missing []string
	for _, im := range d.order {
		if im.state != skipped && im.upstream == "" {
			missing = append(missing, im.ref)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(&b, "\nnot in the server's plan: %s\n", strings.Join(missing, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
