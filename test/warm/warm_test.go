package warm

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/warm"
)

const (
	name  = "reg.warm.test"
	token = "warm-token"
)

// image is one pushed image of a test's set.
type image struct {
	ref   string // as written in a warm request
	repo  string // repo:tag or repo@digest, as pulled from the proxy's port
	index bool
	blobs []string
}

// pushSet pushes n images, the last a two-platform index, one pinned by
// digest, and returns them with every blob digest they hold.
func pushSet(t *testing.T, reg *ts.Registry, n int) []image {
	t.Helper()
	var set []image
	for i := range n - 1 {
		repoTag := fmt.Sprintf("team/app%d:v1", i)
		img := ts.PushImage(t, reg, repoTag, 2, 16<<10)
		im := image{ref: name + "/" + repoTag, repo: repoTag, blobs: blobsOf(t, img)}
		if i == 3 {
			// One reference pinned by tag and digest, as a rollout writes it.
			d := ts.Digest(t, img)
			im.ref, im.repo = name+"/"+repoTag+"@"+d, fmt.Sprintf("team/app%d@%s", i, d)
		}
		set = append(set, im)
	}
	idx := ts.PushIndex(t, reg, "team/multi:v1")
	im := image{ref: name + "/team/multi:v1", repo: "team/multi:v1", index: true}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Manifests {
		child, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		im.blobs = append(im.blobs, blobsOf(t, child)...)
	}
	return append(set, im)
}

func blobsOf(t *testing.T, img v1.Image) []string {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{cfg.String()}, ts.LayerDigests(t, img)...)
}

func refs(set []image) []string {
	out := make([]string, len(set))
	for i, im := range set {
		out[i] = im.ref
	}
	return out
}

// A warm of a 20-image set while clients pull the same images fetches
// each blob from the upstream once, reports every image done, and leaves
// everything cached: a second warm fetches nothing, and with the upstream
// stopped every image still pulls.
func TestWarmWhileClientsPull(t *testing.T) {
	w := newWatch()
	reg := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w.wrap})
	set := pushSet(t, reg, 20)
	w.reset()

	p := startWarmProxy(t, reg)

	// Three clients pull the whole set, each in its own order, while the
	// warm runs.
	pulled := pullWhile(t, p, set, 3)
	events := warmNow(t, p, token, warm.Request{Images: refs(set)})
	pulled()

	kinds := byKind(events)
	sum := summary(t, events)
	if sum.Cached != len(set) || sum.Failed != 0 || sum.Skipped != 0 {
		t.Fatalf("summary %+v, want %d cached; failures: %+v", sum, len(set), kinds[warm.EventFailed])
	}
	// The plan comes first, in input order, then each image starts and
	// is done, with the digest the client sees and every blob.
	for i, im := range set {
		if e := events[i]; e.Event != warm.EventPlan || e.Image != im.ref || e.Upstream != name {
			t.Errorf("event %d = %+v, want the plan of %s on %s", i, e, im.ref, name)
		}
	}
	done := map[string]warm.Event{}
	for _, e := range kinds[warm.EventDone] {
		done[e.Image] = e
	}
	var allBlobs []string
	for _, im := range set {
		allBlobs = append(allBlobs, im.blobs...)
		e, ok := done[im.ref]
		if !ok {
			t.Errorf("%s: no done event", im.ref)
			continue
		}
		if e.Blobs != len(im.blobs) || e.Bytes <= 0 || !strings.HasPrefix(e.Digest, "sha256:") {
			t.Errorf("%s: done %+v, want %d blobs and their bytes", im.ref, e, len(im.blobs))
		}
		if strings.Contains(im.ref, "@") && !strings.HasSuffix(im.ref, e.Digest) {
			t.Errorf("%s: done with digest %s", im.ref, e.Digest)
		}
	}
	t.Logf("warm while %d clients pull: %+v; progress events: %d", 3, sum, len(kinds[warm.EventProgress]))
	if n := len(kinds[warm.EventStart]); n != len(set) {
		t.Errorf("%d start events, want %d", n, len(set))
	}

	// Each blob came from the upstream once, whoever asked first.
	got := w.blobs()
	for _, d := range allBlobs {
		if got[d] != 1 {
			t.Errorf("blob %s fetched upstream %d times, want once", d, got[d])
		}
	}
	if len(got) != len(allBlobs) {
		t.Errorf("the upstream served %d distinct blobs, the set has %d", len(got), len(allBlobs))
	}
	p.Settle(t)

	// Warm again: all cached, nothing fetched.
	w.reset()
	again := summary(t, warmNow(t, p, token, warm.Request{Images: refs(set)}))
	if again.Cached != len(set) || again.Failed != 0 {
		t.Errorf("second warm: %+v", again)
	}
	if b := w.blobs(); len(b) != 0 {
		t.Errorf("second warm fetched %d blobs upstream: %v", len(b), b)
	}
	if n := p.Metric(t, "multiproxy_warm_images_total", map[string]string{"upstream": name, "result": "cached"}); n != float64(2*len(set)) {
		t.Errorf("multiproxy_warm_images_total{result=cached} = %v, want %d", n, 2*len(set))
	}
	if n := p.Metric(t, "multiproxy_warm_bytes_total", map[string]string{"upstream": name}); n < float64(2*sum.Bytes) || sum.Bytes == 0 {
		t.Errorf("multiproxy_warm_bytes_total = %v, want both warms' %d bytes", n, 2*sum.Bytes)
	}

	// The upstream is gone; every image pulls from the cache alone.
	reg.Stop()
	for _, im := range set {
		if err := pull(p, t, name, im.repo, im.index); err != nil {
			t.Errorf("with the upstream stopped: %v", err)
		}
	}
}

// An upstream whose ratelimit-remaining falls below warm.min_remaining is
// left alone: the warm says it stopped, and its images not yet warmed are
// failed without a request.
func TestWarmStopsAtTheRateLimitFloor(t *testing.T) {
	w := newWatch()
	reg := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w.wrap})
	var set []image
	for i := range 8 {
		repoTag := fmt.Sprintf("team/limited%d:v1", i)
		ts.PushImage(t, reg, repoTag, 1, 4<<10)
		set = append(set, image{ref: name + "/" + repoTag, repo: repoTag})
	}
	w.reset()
	w.mu.Lock()
	w.budget = 13 // ten left after three manifest GETs
	w.mu.Unlock()

	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: name, Reg: reg})
	// One image at a time, so that each sees the headroom the last left.
	cfg.Warm = config.Warm{MinRemaining: 10, Concurrency: 1}
	p := ts.StartProxyConfig(t, cfg)
	events := warmNow(t, p, "", warm.Request{Images: refs(set)})

	kinds := byKind(events)
	stopped := kinds[warm.EventStopped]
	if len(stopped) != 1 || stopped[0].Upstream != name ||
		!strings.HasPrefix(stopped[0].Reason, "upstream ratelimit-remaining ") ||
		!strings.HasSuffix(stopped[0].Reason, " is below warm.min_remaining 10") {
		t.Fatalf("stopped events %+v, want one for %s at the floor", stopped, name)
	}
	sum := summary(t, events)
	t.Logf("%s; summary %+v", stopped[0].Reason, sum)
	if sum.Cached == 0 || sum.Failed == 0 || sum.Cached+sum.Failed != len(set) {
		t.Fatalf("summary %+v: want some warmed before the floor and the rest failed", sum)
	}
	// After the stop, only failures; none of them was asked upstream.
	after := slices.IndexFunc(events, func(e warm.Event) bool { return e.Event == warm.EventStopped })
	gets := strings.Join(w.gets(), "\n")
	for _, e := range events[after+1:] {
		switch e.Event {
		case warm.EventFailed:
			if e.Error != warm.StoppedError {
				t.Errorf("%s failed with %q, want %q", e.Image, e.Error, warm.StoppedError)
			}
			repo := strings.TrimPrefix(e.Image, name+"/")
			repo, _, _ = strings.Cut(repo, ":")
			if strings.Contains(gets, "/v2/"+repo+"/") {
				t.Errorf("%s was fetched upstream after the stop", e.Image)
			}
		case warm.EventSummary:
		default:
			t.Errorf("after the stop: %+v", e)
		}
	}
	if len(kinds[warm.EventFailed]) != sum.Failed || len(kinds[warm.EventDone]) != sum.Cached {
		t.Errorf("events disagree with the summary %+v", sum)
	}
	if n := p.Metric(t, "multiproxy_warm_images_total", map[string]string{"upstream": name, "result": "failed"}); n != float64(sum.Failed) {
		t.Errorf("multiproxy_warm_images_total{result=failed} = %v, want %d", n, sum.Failed)
	}
}
