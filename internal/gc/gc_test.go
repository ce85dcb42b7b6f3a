package gc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/robfig/cron/v3"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/proxy"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func TestDefaultSchedulesNeverOverlap(t *testing.T) {
	specs := gc.DefaultSchedules(5)
	from := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	var runs []time.Time
	for _, spec := range specs {
		sched, err := cron.ParseStandard(spec)
		if err != nil {
			t.Fatalf("%q: %v", spec, err)
		}
		next := from
		for range 10 {
			next = sched.Next(next)
			runs = append(runs, next)
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].Before(runs[j]) })
	for i := 1; i < len(runs); i++ {
		if gap := runs[i].Sub(runs[i-1]); gap < gc.DefaultSpacing {
			t.Errorf("runs at %v and %v are %v apart, less than the %v window", runs[i-1], runs[i], gap, gc.DefaultSpacing)
		}
	}
	if len(runs) != 50 {
		t.Fatalf("%d runs", len(runs))
	}
	t.Logf("schedules %q", specs)
}

// fixture is a proxy.Server for one upstream with its GC store, served on
// 127.0.0.1.
type fixture struct {
	up    *ts.Upstream
	srv   *proxy.Server
	store gc.Store
	base  string
	cfg   config.Upstream
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureOf(t, ts.Profiles()[0])
}

// newFixtureOf serves an upstream of the given profile.
func newFixtureOf(t testing.TB, prof ts.Profile) *fixture {
	t.Helper()
	up := prof.Start(t)
	// A generous upstream timeout: these tests are about what GC deletes, and
	// 50 clients under the race detector can make a healthy upstream slow.
	pu := up.ProxyUpstream("docker.io")
	pu.Tweak = func(u *config.Upstream) { u.Timeout = 15 * time.Second }
	cfg := ts.NewProxyConfig(t, pu)
	u := cfg.Upstreams[0]
	guard := &gc.Guard{}
	srv, err := proxy.New(context.Background(), u, proxy.Options{Guard: guard, Drain: time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { hs.Close(); srv.Close() })
	return &fixture{up: up, srv: srv, store: gc.StoreOf("docker.io", srv.Cache(), guard), base: "http://" + l.Addr().String(), cfg: u}
}

type image struct{ repo, digest string }

func (f *fixture) push(t testing.TB, n, layers int, size int64) []image {
	t.Helper()
	var out []image
	for i := range n {
		repo := fmt.Sprintf("team/app%d", i)
		img := f.up.Push(t, repo+":1", layers, size)
		out = append(out, image{repo, ts.Digest(t, img)})
	}
	return out
}

// settle waits until every fill is committed: clients get their last byte
// before the commit, and a collection or snapshot taken meanwhile would
// count a store still changing.
func (f *fixture) settle(t testing.TB) {
	t.Helper()
	ts.WaitFor(t, 10*time.Second, "fills committed", func() bool { return f.srv.Cache().FillsInFlight() == 0 })
}

// backdate makes an image look last pulled at when.
func (f *fixture) backdate(t testing.TB, im image, when time.Time) {
	t.Helper()
	p := cache.RevisionLinkPath(f.cfg.Storage.Path, im.repo, digest.Digest(im.digest))
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) cached(im image) bool {
	_, err := os.Stat(cache.RevisionLinkPath(f.cfg.Storage.Path, im.repo, digest.Digest(im.digest)))
	return err == nil
}

// Collections run while 50 clients pull, from a plain upstream and from one
// that hands out tokens and redirects blobs to a CDN: no pull fails, and
// only what nobody pulled goes.
func TestOnlineGCWhilePulling(t *testing.T) {
	for _, prof := range ts.Profiles()[:2] {
		t.Run(prof.Name, func(t *testing.T) { onlineGCWhilePulling(t, prof) })
	}
}

func onlineGCWhilePulling(t *testing.T, prof ts.Profile) {
	f := newFixtureOf(t, prof)
	images := f.push(t, 30, 2, 32<<10)
	c := &http.Client{Timeout: 30 * time.Second}
	for _, im := range images[:15] {
		if err := ts.PullVerified(c, f.base, im.repo, "1"); err != nil {
			t.Fatal(err)
		}
	}
	f.settle(t)
	old := time.Now().Add(-48 * time.Hour)
	for _, im := range images[:10] {
		f.backdate(t, im, old)
	}

	// 50 clients pull images 0-4 (old, so chosen for eviction: they must be
	// spared or refetched), 10-14 (warm) and 15-29 (cold: manifests
	// arriving mid-GC), by tag and by digest. 5-9 are left alone.
	var pool []image
	pool = append(pool, images[:5]...)
	pool = append(pool, images[10:]...)
	stop := make(chan struct{})
	var pulls, failures atomic.Int64
	var firstErr atomic.Value
	var pulledMu sync.Mutex
	pulled := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				im := pool[r.IntN(len(pool))]
				ref := "1"
				if r.IntN(2) == 0 {
					ref = im.digest
				}
				pulls.Add(1)
				if err := ts.PullVerified(c, f.base, im.repo, ref); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					pulledMu.Lock()
					pulled[im.repo] = true
					pulledMu.Unlock()
				}
			}
		})
	}
	var freed int64
	var spared int
	for range 5 {
		res, err := gc.Collect(context.Background(), f.store, gc.Policy{MaxUnused: 24 * time.Hour}, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		freed += res.FreedBytes
		spared += res.Spared
		for _, im := range images[:5] {
			// Keep them candidates for every run (if a run evicted one,
			// a later pull brings it back).
			p := cache.RevisionLinkPath(f.cfg.Storage.Path, im.repo, digest.Digest(im.digest))
			_ = os.Chtimes(p, old, old)
		}
	}
	close(stop)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d pulls failed during GC; first: %v", n, pulls.Load(), firstErr.Load())
	}
	if freed == 0 {
		t.Fatal("GC freed nothing: images 5-9 were unused for 48h")
	}
	for _, im := range images[5:10] {
		if f.cached(im) {
			t.Errorf("%s was not evicted", im.repo)
		}
	}
	t.Logf("%d pulls, 0 failures; freed %d bytes; %d objects spared for concurrent pulls", pulls.Load(), freed, spared)

	// Everything still cached is complete: it pulls with the upstream gone.
	f.up.Registry.Stop()
	kept := 0
	for _, im := range images {
		if !f.cached(im) {
			continue
		}
		kept++
		if err := ts.PullVerified(c, f.base, im.repo, im.digest); err != nil {
			t.Errorf("cached %s no longer pulls with the upstream stopped: %v", im.repo, err)
		}
	}
	// Recently pulled images, and every one cached while GC ran, survive.
	for i, im := range images[10:] {
		warm := i < 5 // 10-14 were pulled just before the run
		if (warm || pulled[im.repo]) && !f.cached(im) {
			t.Errorf("%s was pulled recently but is no longer cached", im.repo)
		}
	}
	if kept < 10 {
		t.Errorf("only %d images left cached", kept)
	}
}

// duBlobs is the bytes on disk under the store's blob directory, as du -sb
// would count them.
func duBlobs(t *testing.T, root string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(filepath.Join(root, "docker/registry/v2/blobs"), func(_ string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

func TestMaxSizeEvictsLeastRecentlyPulledFirst(t *testing.T) {
	f := newFixture(t)
	images := f.push(t, 6, 1, 1<<20)
	c := &http.Client{Timeout: 30 * time.Second}
	for i, im := range images {
		if err := ts.PullVerified(c, f.base, im.repo, "1"); err != nil {
			t.Fatal(err)
		}
		f.backdate(t, im, time.Now().Add(time.Duration(i-10)*time.Hour))
	}
	f.settle(t)
	before := duBlobs(t, f.cfg.Storage.Path)
	limit := int64(3<<20 + 512<<10)
	res, err := gc.Collect(context.Background(), f.store, gc.Policy{MaxSize: limit}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	after := duBlobs(t, f.cfg.Storage.Path)
	if after > limit {
		t.Fatalf("bytes on disk %d after GC, above max_size %d (before %d)", after, limit, before)
	}
	for i, im := range images {
		want := i >= 3
		if got := f.cached(im); got != want {
			t.Errorf("image %d (pulled %dh ago): cached=%v, want %v", i, 10-i, got, want)
		}
	}
	if before-after != res.FreedBytes {
		t.Errorf("reported %d bytes freed, disk shrank by %d", res.FreedBytes, before-after)
	}
	if err := ts.PullVerified(c, f.base, images[0].repo, "1"); err != nil {
		t.Fatalf("evicted image pulled again: %v", err)
	}
}

// snapshot lists every file under root with size and mtime.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%v %d %v", fi.IsDir(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDryRunChangesNothing(t *testing.T) {
	f := newFixture(t)
	images := f.push(t, 4, 1, 64<<10)
	c := &http.Client{Timeout: 30 * time.Second}
	for _, im := range images {
		if err := ts.PullVerified(c, f.base, im.repo, "1"); err != nil {
			t.Fatal(err)
		}
	}
	f.settle(t)
	for _, im := range images {
		f.backdate(t, im, time.Now().Add(-100*time.Hour))
	}
	before := snapshot(t, f.cfg.Storage.Path)
	res, err := gc.Collect(context.Background(), f.store, gc.Policy{MaxUnused: time.Hour}, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 4 || res.FreedBytes == 0 {
		t.Errorf("dry run reports %d evictions and %d bytes, want 4 and > 0", len(res.Evicted), res.FreedBytes)
	}
	after := snapshot(t, f.cfg.Storage.Path)
	if len(before) != len(after) {
		t.Fatalf("dry run changed the file count: %d -> %d", len(before), len(after))
	}
	for p, v := range before {
		if after[p] != v {
			t.Errorf("dry run changed %s: %s -> %s", p, v, after[p])
		}
	}
}

// gc output is read by people: its duration has units.
func TestResultJSONDurationHasUnits(t *testing.T) {
	b, err := json.Marshal(gc.Result{Upstream: "docker.io", Duration: 1500 * time.Millisecond, FreedBytes: 3})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["duration"] != "1.5s" || got["freed_bytes"] != float64(3) || got["upstream"] != "docker.io" {
		t.Errorf("gc result JSON %s, want duration \"1.5s\" beside the other fields", b)
	}
}
