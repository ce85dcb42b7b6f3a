package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// This file: the live display on a terminal, redrawn in place: the images
// being fetched, the total, the rate and the ETA.

// Tick redraws a live display if something changed since the last
// redraw, or the rate and ETA are a second old. Call it every
// redrawEvery or so; Start does.
func (d *Display) Tick() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.opt.Live || d.opt.DryRun || d.closed {
		return
	}
	since := d.opt.Now().Sub(d.lastDraw)
	if (d.dirty && since >= redrawEvery) || since >= refreshAll {
		d.redraw()
	}
}

// Start calls Tick every redrawEvery until the returned stop is called.
func (d *Display) Start() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(redrawEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				d.Tick()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// Close writes what is pending and takes the live area off the screen,
// leaving the finished lines.
func (d *Display) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.opt.Live || d.opt.DryRun || d.closed {
		return
	}
	d.closed = true
	d.running = nil
	d.redraw()
}

// redraw goes back up over the live area and writes over it the lines
// that finished since, then the live area again, all in one write so that
// the terminal never shows half a frame. Each line clears its row first
// and after its end (a finished line may wrap); what the last frame had
// below the new one is cleared at the end. Never from the top-left
// corner, where a frame starts after `clear`: tmux moves the whole screen
// into its scrollback then, leaving a stale frame there.
func (d *Display) redraw() {
	now := d.opt.Now()
	d.sample(now)
	var b strings.Builder
	if d.drawn > 0 {
		fmt.Fprintf(&b, "\r\x1b[%dA", d.drawn)
	}
	var lines []string
	for _, l := range d.pending {
		lines = append(lines, l.render(d.opt.Color, d.width()))
	}
	d.pending = d.pending[:0]
	live := d.liveLines(now)
	lines = append(lines, live...)
	for _, l := range lines {
		b.WriteString("\x1b[2K" + l + "\x1b[K\n")
	}
	switch {
	case len(lines) > 0:
		b.WriteString("\x1b[J")
	case d.drawn > 0:
		b.WriteString(strings.Repeat("\x1b[2K\n", d.drawn))
		fmt.Fprintf(&b, "\x1b[%dA", d.drawn)
	}
	d.drawn = len(live)
	_, _ = io.WriteString(d.w, b.String())
	d.lastDraw, d.dirty = now, false
}

func (d *Display) width() int {
	if d.opt.Width != nil {
		if w := d.opt.Width(); w > 0 {
			return w
		}
	}
	return 80
}

// liveLines are the active images and the total, each cut to the width
// less one column: a line that fills the last column leaves some
// terminals' cursor on the next row.
func (d *Display) liveLines(now time.Time) []string {
	if d.closed {
		return nil
	}
	w := d.width() - 1
	var lines []string
	shown := d.running
	if len(shown) > maxActive {
		shown = shown[:maxActive]
	}
	// The name column fits every image of the warm, not just those
	// shown, so that the bars do not jump as images come and go.
	refw := 0
	for _, im := range d.order {
		refw = max(refw, len(im.ref))
	}
	// The name, a bar of 10 to 30 columns and the figures share the
	// width; on a narrow terminal the bar goes first, then the name is
	// cut.
	avail := w - 4 - figuresWidth
	barw := min(avail-refw-4, 30)
	if barw < 10 {
		if avail-14 >= 24 {
			refw, barw = avail-14, 10
		} else {
			refw, barw = max(avail, 10), 0
		}
	}
	for _, im := range shown {
		lines = append(lines, cut(activeLine(im, refw, barw), w))
	}
	if n := len(d.running) - len(shown); n > 0 {
		lines = append(lines, cut(fmt.Sprintf("  ... and %d more being fetched", n), w))
	}
	lines = append(lines, cut(d.totalLine(now), w))
	return lines
}

// figuresWidth is the width of an active line's "done / total  pct".
const figuresWidth = 9 + 3 + 9 + 2 + 4

func activeLine(im *image, refw, barw int) string {
	ref := im.ref
	if len(ref) > refw {
		// Keep the tag end of a long name: it tells images apart.
		ref = "..." + ref[len(ref)-refw+3:]
	}
	if im.total <= 0 {
		return fmt.Sprintf("  %-*s  %9s", refw, ref, size(im.bytes))
	}
	figures := fmt.Sprintf("%9s / %-9s  %3d%%", size(im.bytes), size(im.total), percent(im.bytes, im.total))
	if barw == 0 {
		return fmt.Sprintf("  %-*s  %s", refw, ref, figures)
	}
	return fmt.Sprintf("  %-*s  [%s]  %s", refw, ref, bar(im.bytes, im.total, barw), figures)
}

func (d *Display) totalLine(now time.Time) string {
	var done, known int64
	var ncached, nfailed, nskipped, nwaiting int
	for _, im := range d.order {
		done += im.bytes
		known += max(im.total, im.bytes)
		switch im.state {
		case cached:
			ncached++
		case failed:
			nfailed++
		case skipped:
			nskipped++
		case waiting, planned:
			nwaiting++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  %d/%d cached", ncached, len(d.order))
	if nfailed > 0 {
		fmt.Fprintf(&b, ", %d failed", nfailed)
	}
	if nskipped > 0 {
		fmt.Fprintf(&b, ", %d skipped", nskipped)
	}
	if nwaiting > 0 {
		fmt.Fprintf(&b, ", %d waiting", nwaiting)
	}
	fmt.Fprintf(&b, "  |  %s / %s", size(done), size(known))
	rate := d.rate()
	if rate > 0 {
		fmt.Fprintf(&b, "  |  %s/s", size(int64(rate)))
		left := time.Duration(float64(known-done) / rate * float64(time.Second))
		if nwaiting > 0 {
			// Waiting images' sizes are not known yet.
			fmt.Fprintf(&b, "  |  ETA > %s", duration(left))
		} else {
			fmt.Fprintf(&b, "  |  ETA %s", duration(left))
		}
	} else {
		b.WriteString("  |  -- /s")
	}
	fmt.Fprintf(&b, "  |  %s", duration(now.Sub(d.begin)))
	return b.String()
}

// sample records the bytes done so far for the rate.
func (d *Display) sample(now time.Time) {
	var done int64
	for _, im := range d.order {
		done += im.bytes
	}
	d.samples = append(d.samples, sample{now, done})
	i := 0
	for i < len(d.samples)-2 && now.Sub(d.samples[i+1].at) >= rateWindow {
		i++
	}
	d.samples = d.samples[i:]
}

// rate is bytes per second over the last rateWindow, 0 until there is
// half a second to measure over.
func (d *Display) rate() float64 {
	if len(d.samples) < 2 {
		return 0
	}
	first, last := d.samples[0], d.samples[len(d.samples)-1]
	dt := last.at.Sub(first.at)
	if dt < 500*time.Millisecond {
		return 0
	}
	return float64(last.bytes-first.bytes) / dt.Seconds()
}
