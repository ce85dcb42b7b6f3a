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
	"sync"
	"time"

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
