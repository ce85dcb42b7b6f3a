package warm

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/config"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{}, "at least one image"},
		{Request{Images: []string{"a"}, Platforms: []string{"linux/amd64", "linux/"}}, `platforms[1]: "linux/" is not a platform`},
		{Request{Images: []string{"a"}, Platforms: []string{"linux/arm/v7"}}, ""},
		// A bad reference is skipped at warm time, not refused.
		{Request{Images: []string{"Not A Reference"}}, ""},
	} {
		err := c.req.Check()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("Check(%+v) = %v, want %q", c.req, err, c.want)
		}
	}
}

func TestPlatformMatches(t *testing.T) {
	for _, c := range []struct {
		want              string
		os, arch, variant string
		matches           bool
	}{
		{"linux/amd64", "linux", "amd64", "", true},
		{"linux/amd64", "linux", "arm64", "", false},
		{"linux/arm64", "linux", "arm64", "v8", true},
		{"linux/arm64/v8", "linux", "arm64", "", true},
		{"linux/arm/v7", "linux", "arm", "v6", false},
		{"linux/arm/v7", "linux", "arm", "v7", true},
		{"windows/amd64", "linux", "amd64", "", false},
	} {
		p, err := parsePlatform(c.want)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.matches(c.os, c.arch, c.variant); got != c.matches {
			t.Errorf("%s matches %s/%s/%s = %v, want %v", c.want, c.os, c.arch, c.variant, got, c.matches)
		}
	}
}

// registry is a minimal in-memory registry handler: the shape of what a
// warm reads (manifests by tag or digest, blobs), enough to show what
// the engine does with an index and with content that is not what it
// claims. The end-to-end tests in test/warm run the real cache.
type registry struct {
	mu        sync.Mutex
	manifests map[string][]byte // tag or digest -> body
	types     map[string]string
	blobs     map[digest.Digest][]byte
	gets      []string
	abort     digest.Digest // a blob whose answer breaks off, as a failed fill's does
}

func (r *registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets = append(r.gets, req.URL.Path)
	_, rest, _ := strings.Cut(req.URL.Path, "/v2/app/")
	kind, ref, _ := strings.Cut(rest, "/")
	switch kind {
	case "manifests":
		body, ok := r.manifests[ref]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
			return
		}
		w.Header().Set("Content-Type", r.types[ref])
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(body).String())
		_, _ = w.Write(body)
	case "blobs":
		b, ok := r.blobs[digest.Digest(ref)]
		if digest.Digest(ref) == r.abort {
			_, _ = w.Write(b[:1])
			panic(http.ErrAbortHandler)
		}
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_, _ = w.Write(b)
	}
}

func (r *registry) blob(b string) descriptor {
	d := digest.FromString(b)
	r.blobs[d] = []byte(b)
	return descriptor{Digest: d, Size: int64(len(b))}
}

func (r *registry) put(ref, mt string, v any) digest.Digest {
	b, _ := json.Marshal(v)
	d := digest.FromBytes(b)
	r.manifests[ref], r.types[ref] = b, mt
	r.manifests[d.String()], r.types[d.String()] = b, mt
	return d
}

func run1(t *testing.T, h http.Handler, req Request) []Event {
	t.Helper()
	var events []Event
	o := Options{Upstreams: []Upstream{{Name: "reg.test", Serves: func(r string) bool { return r == "reg.test" }, Handler: h}}}
	if err := Run(context.Background(), o, req, func(e Event) { events = append(events, e) }); err != nil {
		t.Fatal(err)
	}
	return events
}

// An index is warmed with the chosen platforms' manifests and blobs only,
// a blob two platforms share is read once, and a pinned digest that the
// content does not match fails the image.
func TestIndexPlatformsAndDigests(t *testing.T) {
	r := &registry{manifests: map[string][]byte{}, types: map[string]string{}, blobs: map[digest.Digest][]byte{}}
	shared := r.blob("shared layer")
	image := func(arch string) descriptor {
		d := r.put("img-"+arch, mtOCIManifest, manifest{MediaType: mtOCIManifest,
			Config: ptr(r.blob("config " + arch)), Layers: []descriptor{shared, r.blob("layer " + arch)}})
		desc := descriptor{MediaType: mtOCIManifest, Digest: d, Size: int64(len(r.manifests[d.String()]))}
		desc.Platform = &descPlatform{OS: "linux", Architecture: arch}
		return desc
	}
	idx := r.put("multi", mtOCIIndex, manifest{MediaType: mtOCIIndex, Manifests: []descriptor{image("amd64"), image("arm64"), image("s390x")}})

	events := run1(t, r, Request{Images: []string{"reg.test/app:multi"}, Platforms: []string{"linux/amd64", "linux/arm64"}})
	done := events[len(events)-2]
	if done.Event != EventDone || done.Digest != idx.String() || done.Blobs != 5 {
		t.Fatalf("events %+v, want done with the index digest and 5 blobs (2 configs, the shared layer once, 2 layers)", events)
	}
	for _, p := range r.gets {
		if strings.Contains(p, digest.FromString("layer s390x").String()) {
			t.Errorf("a platform not asked for was warmed: %s", p)
		}
	}
	if n := strings.Count(strings.Join(r.gets, " "), shared.Digest.String()); n != 1 {
		t.Errorf("the shared layer was read %d times, want once", n)
	}

	events = run1(t, r, Request{Images: []string{"reg.test/app:multi"}, Platforms: []string{"windows/amd64"}})
	if f := events[len(events)-2]; f.Event != EventFailed || f.Error != "the index has no manifest for windows/amd64" {
		t.Errorf("no matching platform: %+v", f)
	}

	wrong := digest.FromString("something else")
	events = run1(t, r, Request{Images: []string{"reg.test/app@" + wrong.String()}})
	if f := events[len(events)-2]; f.Event != EventFailed || !strings.Contains(f.Error, "404 MANIFEST_UNKNOWN") {
		t.Errorf("unknown digest: %+v", f)
	}
	// The handler answers a digest with other content: never reported done.
	r.manifests[wrong.String()], r.types[wrong.String()] = r.manifests["img-amd64"], mtOCIManifest
	events = run1(t, r, Request{Images: []string{"reg.test/app@" + wrong.String()}})
	if f := events[len(events)-2]; f.Event != EventFailed || !strings.Contains(f.Error, "want "+wrong.String()) {
		t.Errorf("content not matching its digest: %+v", f)
	}
}

func ptr[T any](v T) *T { return &v }

// A blob whose answer the cache breaks off (an upstream stream that broke
// or did not verify) fails its image, and the warm goes on; a blob the
// cache served but did not keep fails it too, without waiting for a
// commit that will not come.
func TestBlobNotCached(t *testing.T) {
	r := &registry{manifests: map[string][]byte{}, types: map[string]string{}, blobs: map[digest.Digest][]byte{}}
	layer := r.blob("layer")
	r.put("broken", mtOCIManifest, manifest{MediaType: mtOCIManifest, Config: ptr(r.blob("config")), Layers: []descriptor{layer}})
	r.put("fine", mtOCIManifest, manifest{MediaType: mtOCIManifest, Config: ptr(r.blob("config 2"))})
	r.abort = layer.Digest
	events := run1(t, r, Request{Images: []string{"reg.test/app:broken", "reg.test/app:fine"}})
	sum := events[len(events)-1]
	if sum.Cached != 1 || sum.Failed != 1 {
		t.Fatalf("events %+v, want the broken image failed and the other cached", events)
	}
	for _, e := range events {
		if e.Event == EventFailed && e.Error != "blob "+layer.Digest.String()+": the cache broke the answer off" {
			t.Errorf("failed with %q", e.Error)
		}
	}

	r.abort = ""
	var events2 []Event
	o := Options{Upstreams: []Upstream{{Name: "reg.test", Serves: func(string) bool { return true }, Handler: r,
		Stored:  func(context.Context, string, digest.Digest) (bool, error) { return false, nil },
		Filling: func() bool { return false }}}}
	start := time.Now()
	if err := Run(context.Background(), o, Request{Images: []string{"reg.test/app:fine"}}, func(e Event) { events2 = append(events2, e) }); err != nil {
		t.Fatal(err)
	}
	if f := events2[len(events2)-2]; f.Event != EventFailed || !strings.Contains(f.Error, "the cache did not keep it") || time.Since(start) > 5*time.Second {
		t.Errorf("a blob not kept: %+v after %v", f, time.Since(start))
	}
}

// A scheduled turn reads its list file each time and warms what it names.
func TestSchedulerWarmsTheList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(file, []byte("# nightly\nreg.test/app:1\nreg.test/app:2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []Request
	s, err := NewScheduler([]config.WarmList{{From: file, Schedule: "0 3 * * *"}}, func(_ context.Context, origin string, req Request, emit func(Event)) error {
		if origin != file {
			t.Errorf("origin %q, want the list", origin)
		}
		got = append(got, req)
		emit(Event{Event: EventSummary})
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Warm(file)
	if err := os.WriteFile(file, []byte("reg.test/app:3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Warm(file)
	s.Stop()
	if len(got) != 2 || !slices.Equal(got[0].Images, []string{"reg.test/app:1", "reg.test/app:2"}) || !slices.Equal(got[1].Images, []string{"reg.test/app:3"}) {
		t.Errorf("warmed %+v", got)
	}
	if _, err := NewScheduler([]config.WarmList{{From: file, Schedule: "nightly"}}, nil, nil); err == nil || !strings.Contains(err.Error(), "warm.lists[0].schedule") {
		t.Errorf("bad schedule: %v", err)
	}
}

// A cancelled warm (the client went away, the process stops) fails the
// images it had not started, and still ends with a summary.
func TestCancelledWarm(t *testing.T) {
	r := &registry{manifests: map[string][]byte{}, types: map[string]string{}, blobs: map[digest.Digest][]byte{}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var events []Event
	o := Options{Upstreams: []Upstream{{Name: "reg.test", Serves: func(string) bool { return true }, Handler: r}}}
	if err := Run(ctx, o, Request{Images: []string{"reg.test/a:1", "reg.test/b:1"}}, func(e Event) { events = append(events, e) }); err != nil {
		t.Fatal(err)
	}
	sum := events[len(events)-1]
	if sum.Event != EventSummary || sum.Failed != 2 || len(r.gets) != 0 {
		t.Errorf("events %+v, gets %v: want both failed unasked", events, r.gets)
	}
}
