package proxy_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/proxy"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// Recycling every 200 ms under eight pulling clients fails no pull, from a
// plain upstream and from one with tokens and a CDN.
func TestPullsNeverFailWhileRecyclingEvery200ms(t *testing.T) {
	for _, prof := range ts.Profiles()[:2] {
		t.Run(prof.Name, func(t *testing.T) { pullsWhileRecycling(t, prof) })
	}
}

func pullsWhileRecycling(t *testing.T, prof ts.Profile) {
	up := prof.Start(t)
	type image struct{ repo, tag, digest string }
	var images []image
	for i := range 24 {
		repo := fmt.Sprintf("team/app%d", i)
		img := up.Push(t, repo+":1", 2, 256<<10)
		images = append(images, image{repo, "1", ts.Digest(t, img)})
	}
	// A generous upstream timeout: this test is about recycling, and eight
	// clients under the race detector can make a healthy upstream slow.
	pu := up.ProxyUpstream("docker.io")
	pu.Tweak = func(u *config.Upstream) { u.Timeout = 15 * time.Second }
	cfg := ts.NewProxyConfig(t, pu)
	cfg.Recycle.Interval = 200 * time.Millisecond
	p := ts.StartProxyConfig(t, cfg)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: 30 * time.Second}
	// Half the images warm before the storm; the rest are pulled cold in it.
	for _, im := range images[:12] {
		if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
			t.Fatal(err)
		}
	}

	var pulls, failures atomic.Int64
	var firstErr atomic.Value
	const storm = 12 * time.Second
	deadline := time.Now().Add(storm)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for time.Now().Before(deadline) {
				im := images[r.IntN(len(images))]
				ref := im.tag
				if r.IntN(2) == 0 {
					ref = im.digest
				}
				pulls.Add(1)
				if err := ts.PullVerified(c, base, im.repo, ref); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d pulls failed during recycling; first: %v", n, pulls.Load(), firstErr.Load())
	}
	// Every completed recycle, whatever its reason (interval, or a retry
	// of one that could not build its App).
	recycles := p.Metric(t, "multiproxy_recycles_total", map[string]string{"upstream": "docker.io"})
	if recycles < 20 {
		t.Fatalf("only %v recycles happened in %v", recycles, storm)
	}
	t.Logf("%d pulls, 0 failures, %v recycles", pulls.Load(), recycles)
}

func newServer(t *testing.T, up *ts.Registry) (*proxy.Server, config.Upstream) {
	t.Helper()
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	u := cfg.Upstreams[0]
	s, err := proxy.New(context.Background(), u, proxy.Options{Drain: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s, u
}

func TestHundredRecyclesLeakNothing(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, up, "library/app:1", 1, 1024)
	srv, _ := newServer(t, up)
	hs := &http.Server{Handler: srv}
	// Warm up what is built once per process (transports, pools).
	for range 3 {
		if err := srv.Recycle(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	baseline := runtime.NumGoroutine()

	for i := range 100 {
		if err := srv.Recycle(context.Background()); err != nil {
			t.Fatalf("recycle %d: %v", i, err)
		}
	}
	// Every replaced App is shut down, goroutines and all: an App left
	// open keeps its notification broadcaster running.
	runtime.GC()
	ts.WaitFor(t, 5*time.Second, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline+3 })
	t.Logf("goroutines: baseline %d, after 100 recycles %d", baseline, runtime.NumGoroutine())

	srv.Close()
	hs.Close()
	up.Stop()
	goleak.VerifyNone(t, append(ts.LeakIgnores(),
		goleak.IgnoreCurrent(),
	)...)
}

// The App serves only the local store, so a recycle needs no upstream: with
// the upstream down it succeeds, and what is cached keeps serving.
func TestRecycleWithUpstreamDownKeepsServing(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 1, 4096)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	c := &http.Client{Timeout: 10 * time.Second}
	if err := ts.PullVerified(c, p.URL("docker.io"), "library/app", "1"); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	resp, err := http.Post(p.AdminURL()+"/api/v1/recycle?upstream=docker.io", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a recycle with the upstream down answered %d, want 200", resp.StatusCode)
	}
	if n := p.Metric(t, "multiproxy_recycles_total", map[string]string{"upstream": "docker.io", "reason": "admin"}); n != 1 {
		t.Errorf("multiproxy_recycles_total{reason=admin} = %v, want 1", n)
	}
	for _, ref := range []string{"1", ts.Digest(t, img)} {
		if err := ts.PullVerified(c, p.URL("docker.io"), "library/app", ref); err != nil {
			t.Errorf("after a failed recycle: %v", err)
		}
	}
}
