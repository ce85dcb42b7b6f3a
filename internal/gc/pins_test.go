package gc_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/gc"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// Images pinned in the config (by tag) and at run time (by digest) survive
// max_size, max_unused and a plain collection, with every blob they need,
// while unpinned images pulled at the same time are evicted.
func TestPinnedImagesAreNeverEvicted(t *testing.T) {
	f := newFixture(t)
	images := f.push(t, 4, 2, 256<<10)
	c := &http.Client{Timeout: 30 * time.Second}
	old := time.Now().Add(-72 * time.Hour)
	for _, im := range images {
		if err := ts.PullVerified(c, f.base, im.repo, "1"); err != nil {
			t.Fatal(err)
		}
	}
	f.settle(t)
	for _, im := range images {
		f.backdate(t, im, old) // all the same age
	}
	ctx := context.Background()
	if _, err := f.srv.Cache().AddPin(ctx, images[1].repo+"@"+images[1].digest, 0); err != nil {
		t.Fatal(err)
	}
	pol := gc.Policy{MaxSize: 1, MaxUnused: time.Hour, Pins: []string{images[0].repo + ":1"}}
	res, err := gc.Collect(ctx, f.store, pol, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, im := range images {
		if want := i < 2; f.cached(im) != want {
			t.Errorf("image %d: cached=%v after GC, want %v (pins: images 0 and 1)", i, f.cached(im), want)
		}
	}
	if len(res.Evicted) != 2 {
		t.Errorf("evicted %v, want the two unpinned images", res.Evicted)
	}
	if res.PinnedBytes < 2*2*256<<10 {
		t.Errorf("result says pins hold %d bytes, want at least their 4 layers", res.PinnedBytes)
	}
	// A second run, and one for the watermark (Free: everything), keep them.
	if _, err := gc.Collect(ctx, f.store, gc.Policy{Free: 1 << 40, Pins: pol.Pins}, false, nil); err != nil {
		t.Fatal(err)
	}
	f.up.Registry.Stop()
	for _, im := range images[:2] {
		if err := ts.PullVerified(c, f.base, im.repo, im.digest); err != nil {
			t.Errorf("pinned %s does not pull from the cache with the upstream stopped: %v", im.repo, err)
		}
	}

	// Unpinned, it goes like any other.
	if err := f.srv.Cache().RemovePin(ctx, images[1].repo+"@"+images[1].digest); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Collect(ctx, f.store, pol, false, nil); err != nil {
		t.Fatal(err)
	}
	if f.cached(images[1]) || !f.cached(images[0]) {
		t.Errorf("after unpinning image 1: image 0 cached=%v (want true), image 1 cached=%v (want false)", f.cached(images[0]), f.cached(images[1]))
	}
}

// A pinned multi-arch tag holds its index and every platform's manifest
// and blobs that were pulled; pin add fetches the platform manifests.
func TestPinnedIndexHoldsItsPlatforms(t *testing.T) {
	f := newFixture(t)
	idx := ts.PushIndex(t, f.up.Registry, "team/multi:1")
	ctx := context.Background()
	p, err := f.srv.Cache().AddPin(ctx, "team/multi:1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.Digest.String() != ts.Digest(t, idx) || p.Source != cache.PinFromAPI {
		t.Errorf("pin add answered %+v, want the index %s from the API", p, ts.Digest(t, idx))
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	for _, m := range im.Manifests {
		if err := ts.PullVerified(c, f.base, "team/multi", m.Digest.String()); err != nil {
			t.Fatal(err)
		}
	}
	f.settle(t)
	res, err := gc.Collect(ctx, f.store, gc.Policy{MaxSize: 1}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 0 || res.FreedBytes != 0 {
		t.Errorf("GC of a store holding only a pinned index freed %d bytes and evicted %v", res.FreedBytes, res.Evicted)
	}
	_, total, err := f.srv.Cache().Pins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if total != res.PinnedBytes || total == 0 {
		t.Errorf("cache says pins hold %d bytes, GC %d", total, res.PinnedBytes)
	}
	f.up.Registry.Stop()
	for _, m := range im.Manifests {
		if err := ts.PullVerified(c, f.base, "team/multi", m.Digest.String()); err != nil {
			t.Errorf("platform %s of the pinned index: %v", m.Platform, err)
		}
	}
}

// A pin that does not exist upstream is refused, and one over the limit
// is refused with what pins would hold, changing nothing.
func TestPinAddRefusals(t *testing.T) {
	f := newFixture(t)
	images := f.push(t, 1, 1, 128<<10)
	ctx := context.Background()
	if _, err := f.srv.Cache().AddPin(ctx, "team/none:1", 0); err == nil {
		t.Error("pinning a tag the upstream does not have succeeded")
	}
	c := &http.Client{Timeout: 30 * time.Second}
	if err := ts.PullVerified(c, f.base, images[0].repo, "1"); err != nil {
		t.Fatal(err)
	}
	f.settle(t)
	_, err := f.srv.Cache().AddPin(ctx, images[0].repo+":1", 64<<10)
	var over *cache.PinLimitError
	if !errors.As(err, &over) || over.Pinned < 128<<10 || over.Limit != 64<<10 {
		t.Fatalf("pin over max_size: %v, want a PinLimitError", err)
	}
	pins, _, err := f.srv.Cache().Pins(ctx)
	if err != nil || len(pins) != 0 {
		t.Errorf("after a refused pin: pins %v, %v", pins, err)
	}
}
