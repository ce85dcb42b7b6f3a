package disk

import (
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// The slow fill of these tests: 50 MiB at 8 MiB/s, about 6 s.
const (
	slowBlob = 50 << 20
	slowRate = 8 << 20
)

// slowFill starts a proxy on a fresh tmpfs in front of an upstream that
// sends one 50 MiB layer slowly, and a client pulling it; it returns once
// the client has its first MiB, with the fill being spooled.
func slowFill(t *testing.T, tweak func(*config.Config)) (p *ts.Proxy, f *ts.Faults, calls *upstreamCalls, storage string, im image, pull *slowPull) {
	t.Helper()
	dir := mountTmpfs(t)
	storage = filepath.Join(dir, "docker.io")
	f = ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	im = pushImage(t, up, "library/big:1", slowBlob)
	calls = &upstreamCalls{}
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/" + im.layers[0], Action: calls.wrap(ts.Throttle(slowRate))})
	p = startProxy(t, up, storage, tweak)
	pull = startPull(&http.Client{Timeout: 5 * time.Minute}, p.URL("docker.io"), im.repo, im.layers[0])
	ts.WaitFor(t, 60*time.Second, "the client's first MiB", func() bool { return pull.read.n.Load() >= 1<<20 })
	if len(spoolFiles(storage)) != 1 {
		t.Fatalf("spool holds %v while the fill runs, want one file", spoolFiles(storage))
	}
	return p, f, calls, storage, im, pull
}

// finishesAndIsCached: the slow pull completes with the right bytes, the
// fill is then committed, and the next pull is served from the cache with
// no upstream request.
func finishesAndIsCached(t *testing.T, p *ts.Proxy, f *ts.Faults, storage string, im image, pull *slowPull) {
	t.Helper()
	layer := im.layers[0]
	if err := pull.wait(t, 5*time.Minute); err != nil {
		t.Fatalf("the client of the fill: %v", err)
	}
	ts.WaitFor(t, 60*time.Second, "the blob is committed to the store", func() bool { return blobStored(storage, layer) })
	if got, err := hashFile(blobPath(storage, layer)); err != nil || got != layer {
		t.Fatalf("stored blob hashes to %s (%v), want %s", got, err, layer)
	}
	f.ResetCounts()
	if err := fetchBlob(&http.Client{Timeout: time.Minute}, p.URL("docker.io"), im.repo, layer); err != nil {
		t.Fatal(err)
	}
	if n := f.Count("", "/blobs/"); n != 0 {
		t.Errorf("the next pull of the blob made %d upstream requests, want 0: %v", n, f.Requests())
	}
	if n := f.Count("GET", "/blobs/"+layer); n != 0 {
		t.Errorf("%d upstream GETs of the layer after it was stored", n)
	}
}

// TestReloadDuringSlowFill: a reload that changes the upstream's timeout
// rebuilds its server while a 50 MiB fill runs. The client gets the right
// bytes, the fill is committed, and the next pull stays local.
func TestReloadDuringSlowFill(t *testing.T) {
	t.Parallel()
	p, f, calls, storage, im, pull := slowFill(t, nil)
	next := p.Config
	next.Upstreams = slices.Clone(p.Config.Upstreams)
	next.Upstreams[0].Timeout += 5 * time.Second
	if err := p.Process.Reload(context.Background(), next); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if logs := p.Logs(); !strings.Contains(logs, "config reloaded") || !strings.Contains(logs, "changed=1") {
		t.Fatalf("the reload did not rebuild the upstream's server:\n%s", p.Logs())
	}
	finishesAndIsCached(t, p, f, storage, im, pull)
	if n := calls.ended.Load(); n != 1 {
		t.Errorf("%d upstream GETs of the layer ended, want the one fill", n)
	}
}

// TestRecycleDuringSlowFill: the admin API's recycle swaps the upstream's
// App while a 50 MiB fill runs; the fill is the cache's and carries on.
func TestRecycleDuringSlowFill(t *testing.T) {
	t.Parallel()
	p, f, calls, storage, im, pull := slowFill(t, nil)
	resp, err := http.Post(p.AdminURL()+"/api/v1/recycle?upstream=docker.io", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("recycle: %d", resp.StatusCode)
	}
	finishesAndIsCached(t, p, f, storage, im, pull)
	if n := calls.ended.Load(); n != 1 {
		t.Errorf("%d upstream GETs of the layer ended, want the one fill", n)
	}
}

// TestRemovingUpstreamCancelsItsFills: a reload that removes the upstream
// ends its running fill (the upstream connection is closed before the
// blob is through) and leaves no partial spool file, whether a client is
// still reading it or the fill runs on for the cache alone.
func TestRemovingUpstreamCancelsItsFills(t *testing.T) {
	for _, tc := range []struct {
		name         string
		clientLeaves bool
	}{{"client reading", false}, {"client gone", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, _, calls, storage, im, pull := slowFill(t, func(c *config.Config) {
				// Bounds how long the removed listener drains the reading client.
				c.ShutdownTimeout = time.Second
			})
			if tc.clientLeaves {
				// The fill is the cache's: it goes on without its client.
				pull.cancel()
				if err := pull.wait(t, time.Minute); err == nil {
					t.Fatal("a cancelled client got the whole blob")
				}
				before := calls.sent.Load()
				ts.WaitFor(t, 60*time.Second, "the fill goes on without its client", func() bool { return calls.sent.Load() > before+(1<<20) })
				if n := calls.ended.Load(); n != 0 {
					t.Fatalf("the fill's upstream GET ended when its client left")
				}
			}
			next := p.Config
			next.Upstreams = nil
			if err := p.Process.Reload(context.Background(), next); err != nil {
				t.Fatalf("reload removing the upstream: %v", err)
			}
			ts.WaitFor(t, 60*time.Second, "the upstream GET of the blob ends", func() bool { return calls.ended.Load() == 1 })
			if sent := calls.sent.Load(); sent >= slowBlob {
				t.Errorf("the upstream sent the whole blob (%d bytes): the fill was not cancelled", sent)
			}
			ts.WaitFor(t, 60*time.Second, "the partial spool file is removed", func() bool { return len(spoolFiles(storage)) == 0 })
			if blobStored(storage, im.layers[0]) {
				t.Error("the cancelled fill was committed")
			}
			if err := pull.wait(t, time.Minute); err == nil {
				t.Error("the client of a cancelled fill got a complete, verified body")
			}
		})
	}
}
