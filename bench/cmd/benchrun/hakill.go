package main

// The --ha kill trial: a replica killed -9 half-way through a cold fill
// while a client on another replica waits for the same blob.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// killOne: a cold pull of the kill blob through replica A (bases[0]),
// which fetches it; once the front has sent half of it, a second client
// through replica B (bases[1]); once that client has about the same half,
// A is killed with SIGKILL and the upstream body released. The values:
// upstream body bytes for the blob (every GET of it, resumes included) per
// blob size, 1 if B's client got the whole verified blob, and the seconds
// from the kill to its last byte. survivors are the system's processes
// left, to wait for before the counts are read.
func (h *haBench) killOne(s *haSys, victim *proc, survivors *haSys, bytesK, whole, after series, errs *[]string) {
	img := h.killImg
	dg, size := img.layers[0], img.sizes[0]
	fail := func(format string, args ...any) {
		*errs = append(*errs, s.name+": "+fmt.Sprintf(format, args...))
	}
	if err := h.settle(s); err != nil {
		fail("before: %v", err)
	}
	g0, b0 := h.front.counts(dg)
	at := size / 2
	hold := h.front.holdBody(dg, at)
	defer h.front.unhold(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// A's client is cut by the kill: its error is expected and not kept.
	go func() { _, _, _ = get(ctx, s.c, http.MethodGet, blobURL(s.bases[0], img.repo, dg), "", dg) }()
	select {
	case <-hold.reached:
	case <-time.After(60 * time.Second):
		fail("the upstream body never reached %s in 60 s; not killed", mib(at))
		return
	}
	tHeld := time.Now()
	var got atomic.Int64
	survived := make(chan error, 1)
	go func() { survived <- getCounting(ctx, s.c, blobURL(s.bases[1], img.repo, dg), dg, &got) }()
	// B's client at A's offset means B's fill has what A had: the kill
	// then tests a resume from there, not a race with the stream. The
	// margin covers bytes still in buffers between the front and B.
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() < at-1<<20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := got.Load(); n < at-1<<20 {
		fail("B's client had %d of %d bytes after 30 s; killed anyway", n, at)
	}
	if held := time.Since(tHeld); held > h.hp.timeout {
		// The holder's upstream body was idle longer than its upstream
		// timeout: its fill may have failed on its own before the kill.
		fail("the body was held %.1f s before the kill, longer than the %v upstream timeout", held.Seconds(), h.hp.timeout)
	}
	killedAt := got.Load()
	if err := victim.kill9(); err != nil {
		fail("%v", err)
		return
	}
	tKill := time.Now()
	h.front.unhold(hold)
	var err error
	select {
	case err = <-survived:
	case <-ctx.Done():
		err = ctx.Err()
	}
	lastByte := time.Since(tKill)
	if err != nil {
		fail("the surviving client: %v", err)
		whole.put(s.name, 0, 0)
	} else {
		whole.put(s.name, 0, 1)
		after.put(s.name, 0, lastByte.Seconds())
	}
	if err := h.settle(survivors); err != nil {
		fail("after: %v", err)
	}
	g1, b1 := h.front.counts(dg)
	bytesK.put(s.name, 0, float64(b1-b0)/float64(size))
	logf("  %s: killed %s with B's client at %d of %d bytes; upstream %.3fx the blob in %d GETs; B's client whole: %v, last byte %.1f s after the kill",
		s.name, s.bases[0], killedAt, size, float64(b1-b0)/float64(size), g1-g0, err == nil, lastByte.Seconds())
	h.note("kill -9 at 50%%, %s: %s killed with the other client at %d of %d bytes; the upstream sent %d bytes for the blob in %d GETs",
		s.name, s.bases[0], killedAt, size, b1-b0, g1-g0)
}

// getCounting GETs url, verifies the body against dgst and counts the
// bytes read so far in got.
func getCounting(ctx context.Context, c *http.Client, url, dgst string, got *atomic.Int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	hh := sha256.New()
	n, err := io.Copy(io.MultiWriter(hh, counter{got}), resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: read after %d bytes: %w", url, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("GET %s: short body %d of %d", url, n, resp.ContentLength)
	}
	if d := "sha256:" + hex.EncodeToString(hh.Sum(nil)); d != dgst {
		return fmt.Errorf("GET %s: digest mismatch: got %s", url, d)
	}
	return nil
}

// counter is an io.Writer that only counts.
type counter struct{ n *atomic.Int64 }

func (c counter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }
