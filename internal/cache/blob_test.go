package cache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/storelayout"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Two clients of one cold blob share one upstream GET: the second joins
// the fill the first started, both read every byte, and once the fill is
// committed none is in flight and the blob is served from the store.
func TestFillIsShared(t *testing.T) {
	fx := newFixture(t, plain())
	layer, _ := fx.pushLayer(t, "library/app:1", 512<<10)
	release := fx.hold(t, "/blobs/"+layer.String(), 64<<10)

	first := fx.blob(t, "library/app", layer)
	second := fx.blob(t, "library/app", layer)
	if first.Stream == nil || second.Stream == nil {
		t.Fatal("a cold blob was not streamed from a fill")
	}
	if n := fx.c.FillsInFlight(); n != 1 {
		t.Errorf("%d fills in flight, want the one both clients share", n)
	}
	if n := fx.obs.count("join blob"); n != 1 {
		t.Errorf("%d joins reported, want 1", n)
	}
	release()
	for i, br := range []*cache.BlobReader{first, second} {
		if got, err := drain(br); err != nil || got != layer {
			t.Errorf("client %d: %s, %v", i, got, err)
		}
	}
	fx.settle(t)
	if n := fx.f.Count("GET", "/blobs/"+layer.String()); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
	if br := fx.blob(t, "library/app", layer); br.File == nil {
		br.Close()
		t.Error("a committed blob is not served from its file")
	} else if got, err := drain(br); err != nil || got != layer {
		t.Errorf("from the store: %s, %v", got, err)
	}
}

// BlobSize never downloads: one upstream HEAD answers it, or the fill
// running for the blob, and nothing is stored.
func TestBlobSize(t *testing.T) {
	t.Run("one HEAD", func(t *testing.T) {
		fx := newFixture(t, plain())
		layer, want := fx.pushLayer(t, "library/app:1", 64<<10)
		if n, err := fx.c.BlobSize(t.Context(), "library/app", layer); err != nil || n != want {
			t.Fatalf("size %d, %v; want %d", n, err, want)
		}
		if heads, gets := fx.f.Count("HEAD", "/blobs/"+layer.String()), fx.f.Count("GET", "/blobs/"); heads != 1 || gets != 0 {
			t.Errorf("%d HEADs and %d GETs upstream, want 1 and 0: %v", heads, gets, fx.f.Requests())
		}
		if fx.blobStored(t, layer) || fx.c.FillsInFlight() != 0 {
			t.Error("a size question started a fill or stored the blob")
		}
	})
	t.Run("from the running fill", func(t *testing.T) {
		fx := newFixture(t, plain())
		layer, want := fx.pushLayer(t, "library/app:1", 256<<10)
		fx.hold(t, "/blobs/"+layer.String(), 1024)
		br := fx.blob(t, "library/app", layer)
		defer br.Close()
		fx.f.ResetCounts()
		if n, err := fx.c.BlobSize(t.Context(), "library/app", layer); err != nil || n != want {
			t.Fatalf("size %d, %v; want %d", n, err, want)
		}
		if reqs := fx.f.Requests(); len(reqs) != 0 {
			t.Errorf("the size of a blob being filled was asked upstream: %v", reqs)
		}
	})
	t.Run("not found", func(t *testing.T) {
		fx := newFixture(t, plain())
		fx.push(t, "library/app:1", 1024)
		missing := digest.Digest("sha256:" + fmt.Sprintf("%064x", 1))
		if _, err := fx.c.BlobSize(t.Context(), "library/app", missing); !upstream.IsNotFound(err) {
			t.Errorf("a blob the upstream lacks: %v, want not found", err)
		}
	})
}

// Close cancels the fills running (their upstream is gone from the
// config): their clients get an error, nothing is stored, none is left in
// flight, and no fill starts afterwards.
func TestCloseCancelsFills(t *testing.T) {
	fx := newFixture(t, plain())
	layer, _ := fx.pushLayer(t, "library/app:1", 512<<10)
	fx.hold(t, "/blobs/"+layer.String(), 64<<10)
	br := fx.blob(t, "library/app", layer)
	if br.Stream == nil {
		t.Fatal("a cold blob was not streamed from a fill")
	}
	read := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, br.Stream)
		read <- err
	}()

	closed := make(chan struct{})
	go func() { fx.c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return while a fill was held upstream")
	}
	select {
	case err := <-read:
		if err == nil {
			t.Error("the client of a cancelled fill read to a clean end")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client of a cancelled fill still waits")
	}
	br.Close()
	if n := fx.c.FillsInFlight(); n != 0 {
		t.Errorf("%d fills in flight after Close", n)
	}
	if fx.blobStored(t, layer) {
		t.Error("a cancelled fill was stored")
	}
	_, err := fx.c.Blob(t.Context(), "library/app", layer)
	var ue *upstream.Error
	if !errors.As(err, &ue) || ue.Cause != upstream.CauseUnreachable {
		t.Errorf("a blob asked for after Close: %v, want the upstream unreachable", err)
	}
	if n := fx.f.Count(http.MethodGet, "/blobs/"); n != 1 {
		t.Errorf("%d upstream GETs, want only the cancelled one", n)
	}
}

// A client of another repository joining a fill gets the blob linked into
// its repository when the fill commits; that write belongs to the fill, so
// Close, which waits for every writer, returns only once it is done.
func TestCloseWaitsForJoinedLinks(t *testing.T) {
	fx := newFixture(t, plain())
	layer, _ := fx.pushLayer(t, "library/app:1", 512<<10)
	// Links are written only in repositories holding a manifest.
	fx.push(t, "team/other:1", 1024)
	fx.resolve(t, "library/app", "1")
	fx.resolve(t, "team/other", "1")
	release := fx.hold(t, "/blobs/"+layer.String(), 64<<10)
	first := fx.blob(t, "library/app", layer)
	second := fx.blob(t, "team/other", layer)
	if n := fx.obs.count("join blob"); n != 1 {
		t.Fatalf("%d joins reported, want the second client's", n)
	}
	release()
	for i, br := range []*cache.BlobReader{first, second} {
		if got, err := drain(br); err != nil || got != layer {
			t.Errorf("client %d: %s, %v", i, got, err)
		}
	}
	fx.c.Close()
	for _, name := range []string{"library/app", "team/other"} {
		if _, err := fx.repo(t, name).Blobs(t.Context()).Stat(t.Context(), layer); err != nil {
			t.Errorf("after Close, %s has no link to the blob its client pulled: %v", name, err)
		}
	}
	if n := fx.f.Count(http.MethodGet, "/blobs/"); n != 1 {
		t.Errorf("%d upstream GETs, want 1", n)
	}
}

// A cold GET looks at the store for the blob once: the check against a
// fill that landed meanwhile is made in memory, under the cache's lock,
// which the metrics scrape also takes and which must never wait on
// storage.
func TestColdBlobLooksOnce(t *testing.T) {
	var stats *statCounter
	fx := newFixtureWith(t, plain(), func(root string, o *cache.Options) {
		stats = &statCounter{StorageDriver: filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100}), n: map[string]int{}}
		o.Driver = stats
	})
	layer, _ := fx.pushLayer(t, "library/app:1", 256<<10)
	release := fx.hold(t, "/blobs/"+layer.String(), 64<<10)
	br := fx.blob(t, "library/app", layer)
	if br.Stream == nil {
		t.Fatal("a cold blob was not streamed from a fill")
	}
	if n := stats.count(storelayout.BlobData(layer)); n != 1 {
		t.Errorf("the store was asked for a cold blob %d times before its fill, want 1", n)
	}
	release()
	if got, err := drain(br); err != nil || got != layer {
		t.Errorf("the cold blob: %s, %v", got, err)
	}
}

// statCounter counts the Stats of each path on a real driver.
type statCounter struct {
	storagedriver.StorageDriver
	mu sync.Mutex
	n  map[string]int
}

func (s *statCounter) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	s.mu.Lock()
	s.n[path]++
	s.mu.Unlock()
	return s.StorageDriver.Stat(ctx, path)
}

func (s *statCounter) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[path]
}
