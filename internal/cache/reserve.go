package cache

// Space for fills: reservations above the watermark, and eviction when
// there are none.

import (
	"context"
	"time"

	"github.com/multiproxy/multiproxy/internal/disk"
)

// fillStep is how much space a fill of unknown size (no Content-Length)
// claims at a time, ahead of the bytes it writes: large enough that a
// statfs per step costs nothing next to the bytes, small enough that
// concurrent chunked fills do not refuse each other space they will never
// use.
const fillStep = 8 << 20

// reserve claims space for a fill of size bytes, or for its first step
// (fillStep) if its size is unknown; see reserveMore for the next ones. It
// returns a reason (UncachedNoSpace) when the blob must pass through: it
// does not fit above the watermark even after evicting. Eviction is bounded
// by the upstream timeout; if it takes longer it goes on in the background
// and this one fill passes through.
func (c *Cache) reserve(ctx context.Context, size int64) (*disk.Reservation, string) {
	if c.space == nil {
		return nil, ""
	}
	tun := c.tunables()
	need := size
	if size < 0 {
		need = fillStep
	}
	res, ok, err := c.space.Reserve(need, tun.minFree)
	if err != nil {
		// statfs fails when the store's directory is gone; creating the
		// spool will tell whether storing works at all.
		c.log.Warn("disk space unknown", "err", err)
		return nil, ""
	}
	if ok {
		return res, ""
	}
	// A blob bigger than the whole filesystem allows would have every
	// image evicted for nothing: it passes through and evicts nothing.
	if fits, err := c.space.Fits(need, tun.minFree); err == nil && !fits {
		return nil, UncachedNoSpace
	}
	if c.makeRoom != nil {
		c.evictFor(ctx, need)
		if res, ok, err := c.space.Reserve(need, tun.minFree); err == nil && ok {
			return res, ""
		}
	}
	return nil, UncachedNoSpace
}

// reserveMore claims the next step of a fill of unknown size that has
// written bytes so far, evicting for it as reserve does. It reports false
// when the step cannot be had, and the fill must pass through from here.
func (c *Cache) reserveMore(ctx context.Context, res *disk.Reservation, written, step int64) bool {
	tun := c.tunables()
	ok, err := res.Extend(step, tun.minFree)
	if err != nil {
		// As in reserve: with the usage unknown, writing the spool will
		// tell whether storing works at all.
		c.log.Warn("disk space unknown", "err", err)
		return true
	}
	if ok {
		return true
	}
	// The bytes written are the blob's too: if it cannot fit with them,
	// evicting everything else would not make it fit.
	if fits, err := c.space.Fits(written+step, tun.minFree); err == nil && !fits {
		return false
	}
	if c.makeRoom == nil {
		return false
	}
	c.evictFor(ctx, step)
	ok, err = res.Extend(step, tun.minFree)
	return err == nil && ok
}

// evictFor frees space until need bytes fit above the watermark, waiting
// at most the upstream timeout: longer, it goes on in the background.
func (c *Cache) evictFor(ctx context.Context, need int64) {
	short, err := c.space.Shortfall(need, c.tunables().minFree)
	if err != nil || short <= 0 {
		return
	}
	done := make(chan error, 1)
	// Eviction may outlast this fill's wait; it belongs to the
	// cache like the fill (Close cancels and waits for it).
	c.fillWG.Add(1)
	go func() {
		defer c.fillWG.Done()
		done <- c.makeRoom(c.ctx, short)
	}()
	t := time.NewTimer(c.client().Timeout())
	defer t.Stop()
	select {
	case err = <-done:
		if err != nil {
			c.log.Warn("evict for space", "need", short, "err", err)
		}
	case <-t.C:
	case <-ctx.Done():
	}
}
