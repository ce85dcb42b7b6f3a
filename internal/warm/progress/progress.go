// Package progress shows the events of a warm to the person who asked for
// it: on a terminal a live display redrawn in place (one line per image
// being fetched, and a total with a rate and an ETA), elsewhere one plain
// line per finished image, and in both a summary table at the end.
//
// It only writes to an io.Writer and takes the clock and the terminal's
// width as functions, so what a user sees can be tested byte for byte.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/multiproxy/multiproxy/internal/warm"
)

// Options choose how a Display writes.
type Options struct {
	// Live redraws the active images and the total in place; for a
	// terminal. Otherwise a line is written when an image finishes.
	Live bool
	// Color marks the status words on a live display.
	Color bool
	// Width is the terminal's width in columns, asked before each
	// redraw; lines are cut to it, since a wrapped line would break the
	// count of lines to go back up. Nil or 0 means 80.
	Width func() int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DryRun only gathers the plan for WritePlan and writes nothing
	// per event.
	DryRun bool
}

const (
	redrawEvery = 100 * time.Millisecond // at most 10 redraws a second
	refreshAll  = time.Second            // the rate and ETA age without events
	rateWindow  = 5 * time.Second        // the rate is the average over this
	maxActive   = 8                      // active images shown one per line
)

type state int

const (
	waiting state = iota // requested, not yet planned or started
	planned
	active
	cached
	failed
	skipped
)

func (s state) String() string {
	return [...]string{"unfinished", "unfinished", "unfinished", "cached", "failed", "skipped"}[s]
}

type image struct {
	ref, upstream string
	state         state
	bytes, total  int64
	blobs         int
	digest        string
	reason        string // why it failed or was skipped
}

type sample struct {
	at    time.Time
	bytes int64
}

// Display turns warm events into output. Its methods may be called from
// several goroutines.
type Display struct {
	w   io.Writer
	opt Options

	mu       sync.Mutex
	images   map[string]*image
	order    []*image // as requested, then any the server named besides
	running  []*image // active, in the order they started
	stopped  []warm.Event
	summary  *warm.Event
	begin    time.Time
	samples  []sample
	pending  []line // finished lines not yet written above the live area
	drawn    int    // lines of the live area on screen now
	lastDraw time.Time
	dirty    bool
	closed   bool
}

// New returns a Display for a warm of images, in the order requested.
func New(w io.Writer, images []string, opt Options) *Display {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	d := &Display{w: w, opt: opt, images: map[string]*image{}}
	d.begin = opt.Now()
	for _, ref := range images {
		d.lookup(ref)
	}
	return d
}

func (d *Display) lookup(ref string) *image {
	im, ok := d.images[ref]
	if !ok {
		im = &image{ref: ref}
		d.images[ref] = im
		d.order = append(d.order, im)
	}
	return im
}

// Event takes one event of the answer.
func (d *Display) Event(ev warm.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var im *image
	if ev.Image != "" {
		im = d.lookup(ev.Image)
		if ev.Upstream != "" {
			im.upstream = ev.Upstream
		}
	}
	var finished *line
	switch ev.Event {
	case warm.EventPlan:
		if im != nil && im.state == waiting {
			im.state = planned
		}
	case warm.EventSkipped:
		if im != nil {
			im.state, im.reason = skipped, ev.Reason
			finished = d.finishedLine(im)
		}
	case warm.EventStart, warm.EventProgress:
		if im != nil {
			if im.state < active {
				im.state = active
				d.running = append(d.running, im)
			}
			if ev.Total > 0 {
				im.total = ev.Total
			}
			im.bytes = max(im.bytes, ev.Bytes)
		}
	case warm.EventDone:
		if im != nil {
			d.stop(im)
			im.state, im.digest, im.blobs = cached, ev.Digest, ev.Blobs
			if ev.Bytes > 0 {
				im.bytes = ev.Bytes
			}
			im.total = max(im.total, im.bytes)
			finished = d.finishedLine(im)
		}
	case warm.EventFailed:
		if im != nil {
			d.stop(im)
			im.state, im.reason = failed, ev.Error
			finished = d.finishedLine(im)
		}
	case warm.EventStopped:
		d.stopped = append(d.stopped, ev)
		finished = &line{word: "stopped", color: yellow, rest: ev.Upstream + ": " + ev.Reason}
	case warm.EventSummary:
		s := ev
		d.summary = &s
	}
	if d.opt.DryRun {
		return
	}
	if !d.opt.Live {
		if finished != nil {
			fmt.Fprintln(d.w, finished.render(false, 0))
		}
		return
	}
	if finished != nil {
		d.pending = append(d.pending, *finished)
	}
	d.dirty = true
	if d.opt.Now().Sub(d.lastDraw) >= redrawEvery {
		d.redraw()
	}
}

// stop takes im off the live area.
func (d *Display) stop(im *image) {
	for i, r := range d.running {
		if r == im {
			d.running = append(d.running[:i], d.running[i+1:]...)
			return
		}
	}
}

const (
	red    = "\x1b[31m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	reset  = "\x1b[0m"
)

// line is what an image (or a stopped upstream) leaves when it is done
// with: a status word, then what happened.
type line struct {
	word, color, rest string
	// short says that the line may be cut to the terminal's width: a
	// cached image's line says nothing that the table does not, while a
	// reason for a failure must be read whole.
	short bool
}

func (l line) render(color bool, width int) string {
	tag := fmt.Sprintf("%-8s ", l.word)
	rest := l.rest
	if l.short && width > 0 {
		rest = cut(rest, width-1-len(tag))
	}
	if color {
		tag = l.color + l.word + reset + tag[len(l.word):]
	}
	return tag + rest
}

func (d *Display) finishedLine(im *image) *line {
	switch im.state {
	case cached:
		return &line{word: "cached", color: green, short: true,
			rest: fmt.Sprintf("%s  %s, %d blobs  %s", im.ref, size(im.bytes), im.blobs, shortDigest(im.digest))}
	case failed:
		return &line{word: "failed", color: red, rest: fmt.Sprintf("%s via %s: %s", im.ref, im.upstream, im.reason)}
	default:
		return &line{word: "skipped", color: yellow, rest: fmt.Sprintf("%s: %s", im.ref, im.reason)}
	}
}

func shortDigest(dg string) string {
	if len(dg) > len("sha256:")+12 {
		return dg[:len("sha256:")+12]
	}
	return dg
}

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

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func percent(done, total int64) int {
	if total <= 0 {
		return 0
	}
	return int(min(done*100/total, 100))
}

func bar(done, total int64, w int) string {
	fill := 0
	if total > 0 {
		fill = int(min(done*int64(w)/total, int64(w)))
	}
	switch {
	case fill == w:
		return strings.Repeat("=", w)
	case fill == 0:
		return strings.Repeat(" ", w)
	}
	return strings.Repeat("=", fill-1) + ">" + strings.Repeat(" ", w-fill)
}

// cut shortens s to w columns, counting a rune as one: references are
// ASCII, and a server's error text nearly so.
func cut(s string, w int) string {
	if utf8.RuneCountInString(s) <= w {
		return s
	}
	r := []rune(s)
	if w <= 3 {
		return string(r[:max(w, 0)])
	}
	return string(r[:w-3]) + "..."
}

// size is a byte count in binary units, as registries and docker show them.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func duration(t time.Duration) string {
	t = t.Round(time.Second)
	switch {
	case t < time.Minute:
		return fmt.Sprintf("%ds", int(t.Seconds()))
	case t < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(t.Minutes()), int(t.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(t.Hours()), int(t.Minutes())%60)
	}
}
