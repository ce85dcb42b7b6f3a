package progress

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/warm"
)

const MiB = 1 << 20

// clock is a fake time that a test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time        { return c.t }
func (c *clock) add(d time.Duration)   { c.t = c.t.Add(d) }
func newClock() *clock                 { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func ev(kind, image string) warm.Event { return warm.Event{Event: kind, Image: image} }
func plan(image, up string) warm.Event {
	return warm.Event{Event: warm.EventPlan, Image: image, Upstream: up}
}
func lines(s string) []string { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }
func start(image string, total int64) warm.Event {
	return warm.Event{Event: warm.EventStart, Image: image, Total: total}
}
func prog(image string, n, total int64) warm.Event {
	return warm.Event{Event: warm.EventProgress, Image: image, Bytes: n, Total: total}
}

// screen is what a terminal shows after the bytes a display wrote: it
// follows the few control sequences the display uses, and fails the test
// on any other, or on a line that would wrap.
type screen struct {
	t        *testing.T
	width    int
	rows     []string
	row, col int
	// wrap lets a line go on in the next row, as a terminal does; else
	// a line that reaches the last column fails the test.
	wrap bool
}

func (s *screen) write(b []byte) {
	s.t.Helper()
	for i := 0; i < len(b); i++ {
		for len(s.rows) <= s.row {
			s.rows = append(s.rows, "")
		}
		switch c := b[i]; c {
		case '\r':
			s.col = 0
		case '\n':
			s.row, s.col = s.row+1, 0
		case 0x1b:
			j := i + 2
			for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == ';') {
				j++
			}
			arg := string(b[i+2 : j])
			switch b[j] {
			case 'A':
				n, _ := strconv.Atoi(arg)
				s.row -= n
				if s.row < 0 {
					s.t.Fatalf("cursor up %d goes above the screen", n)
				}
			case 'K':
				switch arg {
				case "", "0":
					s.rows[s.row] = s.rows[s.row][:min(s.col, len(s.rows[s.row]))]
				case "2":
					s.rows[s.row] = ""
				default:
					s.t.Fatalf("unexpected control sequence %q", b[i:j+1])
				}
			case 'J':
				if s.row == 0 && s.col == 0 {
					// As after `clear`: tmux would move the whole
					// screen into its scrollback, a stale frame there.
					s.t.Fatal("clear to the end of the screen from the top-left corner")
				}
				s.rows = s.rows[:s.row+1]
				s.rows[s.row] = s.rows[s.row][:min(s.col, len(s.rows[s.row]))]
			case 'm':
			default:
				s.t.Fatalf("unexpected control sequence %q", b[i:j+1])
			}
			i = j
		default:
			line := []byte(s.rows[s.row])
			for len(line) < s.col {
				line = append(line, ' ')
			}
			if s.col < len(line) {
				line[s.col] = c
			} else {
				line = append(line, c)
			}
			s.rows[s.row] = string(line)
			s.col++
			if s.col >= s.width {
				if !s.wrap {
					s.t.Fatalf("line %q reaches the last column (%d) and would wrap", s.rows[s.row], s.width)
				}
				s.row, s.col = s.row+1, 0
			}
		}
	}
}

func (s *screen) Write(b []byte) (int, error) { s.write(b); return len(b), nil }

// text is the screen without its colors, up to the cursor's row.
func (s *screen) text() string {
	var out []string
	for _, r := range s.rows[:min(s.row, len(s.rows))] {
		for {
			i := strings.Index(r, "\x1b[")
			if i < 0 {
				break
			}
			r = r[:i] + r[i+strings.IndexByte(r[i:], 'm')+1:]
		}
		out = append(out, r)
	}
	return strings.Join(out, "\n")
}

func TestPlainOutputIsOneLinePerFinishedImage(t *testing.T) {
	var out bytes.Buffer
	images := []string{"nginx:1.25", "ghcr.io/org/app:v2", "example.com/x:1", "redis:7"}
	d := New(&out, images, Options{})
	for _, e := range []warm.Event{
		plan("nginx:1.25", "docker.io"), plan("ghcr.io/org/app:v2", "ghcr.io"),
		{Event: warm.EventSkipped, Image: "example.com/x:1", Reason: "no upstream serves registry example.com"},
		plan("redis:7", "docker.io"),
		start("nginx:1.25", 70*MiB), prog("nginx:1.25", 20*MiB, 70*MiB),
		start("ghcr.io/org/app:v2", 0),
		{Event: warm.EventDone, Image: "nginx:1.25", Upstream: "docker.io", Digest: "sha256:a484819eb60211f5299034ac80f6a681b06f89e65866ce91f356ed7c72af059c", Bytes: 70 * MiB, Blobs: 7},
		{Event: warm.EventFailed, Image: "ghcr.io/org/app:v2", Upstream: "ghcr.io", Error: "manifest unknown"},
		{Event: warm.EventStopped, Upstream: "docker.io", Reason: "upstream ratelimit-remaining 8 is below warm.min_remaining 10"},
		{Event: warm.EventFailed, Image: "redis:7", Upstream: "docker.io", Error: "not warmed: stopped at the rate-limit floor"},
		{Event: warm.EventSummary, Cached: 1, Failed: 2, Skipped: 1, Bytes: 70 * MiB, Seconds: 12.3},
	} {
		d.Event(e)
	}
	want := []string{
		"skipped  example.com/x:1: no upstream serves registry example.com",
		"cached   nginx:1.25  70.0 MiB, 7 blobs  sha256:a484819eb602",
		"failed   ghcr.io/org/app:v2 via ghcr.io: manifest unknown",
		"stopped  docker.io: upstream ratelimit-remaining 8 is below warm.min_remaining 10",
		"failed   redis:7 via docker.io: not warmed: stopped at the rate-limit floor",
	}
	if got := lines(out.String()); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", out.String(), strings.Join(want, "\n"))
	}

	r := d.Result()
	if r.AllCached() || r.Cached != 1 || r.Failed != 2 || r.Skipped != 1 || r.Images != 4 {
		t.Errorf("result = %+v", r)
	}
	out.Reset()
	if err := d.WriteSummary(&out); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"IMAGE               UPSTREAM   STATUS   SIZE      DETAIL",
		"nginx:1.25          docker.io  cached   70.0 MiB",
		"ghcr.io/org/app:v2  ghcr.io    failed   -         manifest unknown",
		"example.com/x:1     -          skipped  -         no upstream serves registry example.com",
		"redis:7             docker.io  failed   -         not warmed: stopped at the rate-limit floor",
		"",
		"1 of 4 images cached, 2 failed, 1 skipped; 70.0 MiB in 12s",
		"stopped docker.io: upstream ratelimit-remaining 8 is below warm.min_remaining 10",
	}
	if got := out.String(); got != strings.Join(want, "\n")+"\n" {
		t.Errorf("summary:\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
}

func TestAllCachedNeedsEveryImageAndTheSummary(t *testing.T) {
	d := New(&bytes.Buffer{}, []string{"a", "b"}, Options{})
	d.Event(warm.Event{Event: warm.EventDone, Image: "a", Upstream: "u"})
	d.Event(warm.Event{Event: warm.EventDone, Image: "b", Upstream: "u"})
	if d.Result().AllCached() {
		t.Error("all cached before the summary arrived")
	}
	d.Event(warm.Event{Event: warm.EventSummary, Cached: 2})
	if !d.Result().AllCached() {
		t.Errorf("not all cached: %+v", d.Result())
	}

	d = New(&bytes.Buffer{}, []string{"a", "b"}, Options{})
	d.Event(warm.Event{Event: warm.EventDone, Image: "a", Upstream: "u"})
	d.Event(warm.Event{Event: warm.EventSummary, Cached: 1})
	if r := d.Result(); r.AllCached() || r.Unfinished != 1 {
		t.Errorf("an image the server never finished: %+v", r)
	}
	var out bytes.Buffer
	_ = d.WriteSummary(&out)
	if !strings.Contains(out.String(), "\nb      -         unfinished  -\n") ||
		!strings.Contains(out.String(), "1 of 2 images cached, 1 unfinished") {
		t.Errorf("summary:\n%s", out.String())
	}
}

func TestLiveDisplayRedrawsInPlace(t *testing.T) {
	c := newClock()
	scr := &screen{t: t, width: 100}
	images := []string{"docker.io/library/nginx:1.25", "ghcr.io/example/webapp:1.4.2", "quay.io/prometheus/statsd-exporter:v0.26.1"}
	d := New(scr, images, Options{Live: true, Color: true, Now: c.now, Width: func() int { return 100 }})
	for _, im := range images {
		d.Event(plan(im, strings.SplitN(im, "/", 2)[0]))
		c.add(10 * time.Millisecond)
	}
	d.Event(start(images[0], 100*MiB))
	d.Event(start(images[1], 40*MiB))
	c.add(time.Second)
	d.Event(prog(images[0], 50*MiB, 100*MiB))
	c.add(time.Second)
	d.Event(prog(images[1], 10*MiB, 40*MiB))
	d.Tick()
	want := strings.Join([]string{
		"  docker.io/library/nginx:1.25                [==========>           ]   50.0 MiB / 100.0 MiB   50%",
		"  ghcr.io/example/webapp:1.4.2                [====>                 ]   10.0 MiB / 40.0 MiB    25%",
		// 60 MiB in the 2.03s since the first frame.
		"  0/3 cached, 1 waiting  |  60.0 MiB / 140.0 MiB  |  29.6 MiB/s  |  ETA > 3s  |  2s",
	}, "\n")
	// The name column is as wide as the longest name of the warm, so
	// that the bars stay put when the statsd-exporter starts.
	if got := scr.text(); got != want {
		t.Errorf("screen:\n%s\nwant\n%s", got, want)
	}

	// The finished image scrolls up above the live area.
	c.add(time.Second)
	d.Event(warm.Event{Event: warm.EventDone, Image: images[0], Upstream: "docker.io", Digest: "sha256:0123456789abcdef0123", Bytes: 100 * MiB, Blobs: 3})
	want = strings.Join([]string{
		"cached   docker.io/library/nginx:1.25  100.0 MiB, 3 blobs  sha256:0123456789ab",
		"  ghcr.io/example/webapp:1.4.2                [====>                 ]   10.0 MiB / 40.0 MiB    25%",
		"  1/3 cached, 1 waiting  |  110.0 MiB / 140.0 MiB  |  36.3 MiB/s  |  ETA > 1s  |  3s",
	}, "\n")
	if got := scr.text(); got != want {
		t.Errorf("screen:\n%s\nwant\n%s", got, want)
	}

	// Close leaves only the finished lines.
	d.Event(warm.Event{Event: warm.EventFailed, Image: images[1], Upstream: "ghcr.io", Error: "upstream answered 500"})
	d.Close()
	want = strings.Join([]string{
		"cached   docker.io/library/nginx:1.25  100.0 MiB, 3 blobs  sha256:0123456789ab",
		"failed   ghcr.io/example/webapp:1.4.2 via ghcr.io: upstream answered 500",
	}, "\n")
	if got := scr.text(); got != want {
		t.Errorf("screen after Close:\n%s\nwant\n%s", got, want)
	}
	if len(scr.rows) > scr.row && strings.Join(scr.rows[scr.row:], "") != "" {
		t.Errorf("left over below the cursor: %q", scr.rows[scr.row:])
	}
}

func TestLiveDisplayRedrawsAtMostTenTimesASecond(t *testing.T) {
	c := newClock()
	var out bytes.Buffer
	d := New(&out, []string{"a"}, Options{Live: true, Now: c.now})
	frames := func() int { return strings.Count(out.String(), "\x1b[J") }
	d.Event(start("a", 1000))
	if frames() != 1 {
		t.Fatalf("%d frames after the first event", frames())
	}
	for i := range 9 {
		c.add(10 * time.Millisecond)
		d.Event(prog("a", int64(i*100), 1000))
		d.Tick()
	}
	if frames() != 1 {
		t.Errorf("%d frames in 90ms", frames())
	}
	c.add(10 * time.Millisecond)
	d.Tick()
	if frames() != 2 {
		t.Errorf("the changes of the last 100ms not drawn: %d frames", frames())
	}
	// Nothing changes: the rate and ETA are refreshed once a second.
	c.add(500 * time.Millisecond)
	d.Tick()
	if frames() != 2 {
		t.Errorf("redrawn without a change: %d frames", frames())
	}
	c.add(500 * time.Millisecond)
	d.Tick()
	if frames() != 3 {
		t.Errorf("not refreshed after a second: %d frames", frames())
	}
}

func TestLiveDisplayFitsANarrowTerminalAndManyImages(t *testing.T) {
	c := newClock()
	scr := &screen{t: t, width: 60}
	var images []string
	for i := range 12 {
		images = append(images, "registry.example.org/team/a-rather-long-service-name-"+strconv.Itoa(i)+":2026.01.02")
	}
	d := New(scr, images, Options{Live: true, Now: c.now, Width: func() int { return 60 }})
	for _, im := range images {
		d.Event(start(im, 10*MiB))
		c.add(200 * time.Millisecond)
	}
	rows := lines(scr.text())
	if len(rows) != maxActive+2 {
		t.Fatalf("%d rows, want %d active, one for the rest and the total:\n%s", len(rows), maxActive, scr.text())
	}
	if rows[maxActive] != "  ... and 4 more being fetched" {
		t.Errorf("row %d = %q", maxActive, rows[maxActive])
	}
	// The tag end of a long name is kept: it tells the images apart.
	if !strings.Contains(rows[0], "service-name-0:2026.01.02") {
		t.Errorf("first row %q", rows[0])
	}
	// A cached image's line is cut to the width (the screen fails the
	// test if a line wraps); the table has what it loses.
	d.Event(warm.Event{Event: warm.EventDone, Image: images[0], Upstream: "registry.example.org", Digest: "sha256:0123456789abcdef0123", Bytes: 10 * MiB, Blobs: 2})
	c.add(200 * time.Millisecond)
	d.Close()
	if got, want := scr.text(), "cached   registry.example.org/team/a-rather-long-service..."; got != want {
		t.Errorf("after Close: %q, want %q", got, want)
	}
}

func TestDryRunPlanByUpstream(t *testing.T) {
	var out bytes.Buffer
	images := []string{"nginx:1.25", "ghcr.io/a/b:1", "example.com/x:1", "redis:7", "Bad Ref"}
	d := New(&out, images, Options{DryRun: true, Live: true})
	d.Event(plan("nginx:1.25", "docker.io"))
	d.Event(plan("ghcr.io/a/b:1", "ghcr.io"))
	d.Event(warm.Event{Event: warm.EventSkipped, Image: "example.com/x:1", Reason: "no upstream serves registry example.com"})
	d.Event(plan("redis:7", "docker.io"))
	d.Event(warm.Event{Event: warm.EventSkipped, Image: "Bad Ref", Reason: "invalid reference: invalid reference format"})
	d.Event(ev(warm.EventSummary, ""))
	if out.Len() != 0 {
		t.Fatalf("a dry run wrote per event: %q", out.String())
	}
	if err := d.WritePlan(&out, []string{"linux/amd64", "linux/arm64"}); err != nil {
		t.Fatal(err)
	}
	want := `would warm 3 images for linux/amd64, linux/arm64

docker.io (2 images)
  nginx:1.25
  redis:7

ghcr.io (1 image)
  ghcr.io/a/b:1

skipped (2 images)
  example.com/x:1  no upstream serves registry example.com
  Bad Ref          invalid reference: invalid reference format
`
	if out.String() != want {
		t.Errorf("plan:\n%s\nwant\n%s", out.String(), want)
	}
	if r := d.Result(); r.Planned != 3 || r.Skipped != 2 {
		t.Errorf("result %+v", r)
	}
}

func TestSizesAndDurations(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 * 1024: "1.5 MiB", 3 << 30: "3.0 GiB"} {
		if got := size(n); got != want {
			t.Errorf("size(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{1400 * time.Millisecond: "1s", 75 * time.Second: "1m15s", 2*time.Hour + 3*time.Minute: "2h03m"} {
		if got := duration(d); got != want {
			t.Errorf("duration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestSummaryOnATerminalCutsLongDetailsInsteadOfWrapping(t *testing.T) {
	c := newClock()
	scr := &screen{t: t, width: 70}
	d := New(scr, []string{"ghcr.io/example/broken-report:2"}, Options{Live: true, Now: c.now, Width: func() int { return 70 }})
	long := "upstream ghcr.io answered 500 for a layer after 3 tries, and then once more"
	// The finished line is whole; it may wrap, it is not redrawn.
	scr.wrap = true
	d.Event(warm.Event{Event: warm.EventFailed, Image: "ghcr.io/example/broken-report:2", Upstream: "ghcr.io", Error: long})
	d.Close()
	if !strings.Contains(strings.ReplaceAll(scr.text(), "\n", ""), long) {
		t.Fatalf("the failure's line lacks the whole reason:\n%s", scr.text())
	}
	scr.wrap = false
	if err := d.WriteSummary(scr); err != nil {
		t.Fatal(err)
	}
	rows := lines(scr.text())
	if got, want := rows[len(rows)-3], "ghcr.io/example/broken-report:2  ghcr.io   failed  -     upstream ..."; got != want {
		t.Errorf("table row %q, want %q", got, want)
	}
}
