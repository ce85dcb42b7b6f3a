package gc_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/gc"
)

// soleCluster is a cluster of one replica that no other replica claims
// anything in: it isolates the collector's own rule for shared stores.
type soleCluster struct{}

func (soleCluster) Lead(ctx context.Context) (gc.Leadership, error) { return soleLead{ctx}, nil }
func (soleCluster) CollectedSince(context.Context, time.Time) bool  { return false }
func (soleCluster) Collected(context.Context)                       {}
func (soleCluster) LastPulls(context.Context) map[string]time.Time  { return nil }
func (soleCluster) ForgetPulls(context.Context, []string)           {}

type soleLead struct{ ctx context.Context }

func (l soleLead) Context() context.Context                  { return l.ctx }
func (soleLead) Valid() error                                { return nil }
func (soleLead) Check(context.Context) error                 { return nil }
func (soleLead) Claimed(context.Context, digest.Digest) bool { return false }
func (soleLead) End()                                        {}

// On a store other replicas write to, a blob no manifest references may
// be one a replica just stored for a pull whose manifest the scan missed:
// only blobs older than the collection are swept.
func TestSharedStoreSweepsOnlyBlobsOlderThanTheRun(t *testing.T) {
	root := t.TempDir()
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10})
	ns, err := storage.NewRegistry(context.Background(), driver, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	put := func(content string) (digest.Digest, string) {
		d := digest.FromString(content)
		p := "/docker/registry/v2/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
		if err := driver.PutContent(context.Background(), p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		return d, filepath.Join(root, p)
	}
	old, oldPath := put("stored an hour ago, referenced by nothing")
	fresh, freshPath := put("stored just now by another replica")
	hourAgo := time.Now().Add(-time.Hour)
	if err := os.Chtimes(oldPath, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}

	res, err := gc.Collect(context.Background(), gc.Store{Name: "docker.io", Root: root, Driver: driver, NS: ns, Cluster: soleCluster{}}, gc.Policy{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(oldPath); !os.IsNotExist(err) {
		t.Errorf("the old unreferenced blob %s was kept", old)
	}
	if _, err := os.Stat(freshPath); err != nil {
		t.Errorf("the blob stored during the run, %s, was swept: %v", fresh, err)
	}
	if res.FreedBlobs != 1 || res.Spared != 1 {
		t.Errorf("freed %d, spared %d; want 1 and 1", res.FreedBlobs, res.Spared)
	}
}

// A multipart object's LastModified is when its upload began: a large blob
// whose upload straddles the collection's start looks older than the start.
// Anything that began within fill_timeout of the start may still have been
// completing, so it is spared; older is swept.
func TestSharedStoreSparesUploadsThatMayStraddleTheStart(t *testing.T) {
	root := t.TempDir()
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10})
	ns, err := storage.NewRegistry(context.Background(), driver, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	put := func(content string, age time.Duration) string {
		d := digest.FromString(content)
		p := "/docker/registry/v2/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
		if err := driver.PutContent(context.Background(), p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(filepath.Join(root, p), at, at); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(root, p)
	}
	const fillTimeout = 30 * time.Minute
	straddling := put("upload began 10 minutes before the collection", 10*time.Minute)
	old := put("upload began 2 fill timeouts before the collection", 2*fillTimeout)

	st := gc.Store{Name: "docker.io", Root: root, Driver: driver, NS: ns, Cluster: soleCluster{}, MaxUpload: fillTimeout}
	if _, err := gc.Collect(context.Background(), st, gc.Policy{}, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(straddling); err != nil {
		t.Errorf("the blob whose upload may have straddled the start was swept: %v", err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the blob older than fill_timeout was kept")
	}
}

// behindStore is a real filesystem store whose clock runs behind the
// collector's: every modification time it reports is lag earlier than the
// collector's clock said when the write happened, as with an object store
// whose clock is behind. onMarker runs when the collection reads its start
// marker, so a test can write during the collection.
type behindStore struct {
	storagedriver.StorageDriver
	lag      time.Duration
	onMarker func()
}

func (s behindStore) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	fi, err := s.StorageDriver.Stat(ctx, p)
	if err != nil {
		return nil, err
	}
	if p == "/multiproxy/gc-start" && s.onMarker != nil {
		s.onMarker()
	}
	return skewed{fi, s.lag}, nil
}

type skewed struct {
	storagedriver.FileInfo
	lag time.Duration
}

func (f skewed) ModTime() time.Time { return f.FileInfo.ModTime().Add(-f.lag) }

// The object store's clock is 5 minutes behind the collector's: a blob a
// pull stores during the collection has a LastModified 5 minutes before
// the collector's now. The collection's start is read off the store's
// clock (a marker object), so that blob is kept; one older than the start
// by more than fill_timeout is swept.
func TestSharedStoreGoesByTheStoresClock(t *testing.T) {
	root := t.TempDir()
	fs := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10})
	put := func(content string) string {
		d := digest.FromString(content)
		p := "/docker/registry/v2/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
		if err := fs.PutContent(context.Background(), p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(root, p)
	}
	old := put("stored long before the collection")
	at := time.Now().Add(-time.Hour)
	if err := os.Chtimes(old, at, at); err != nil {
		t.Fatal(err)
	}
	var during string
	driver := behindStore{StorageDriver: fs, lag: 5 * time.Minute, onMarker: func() {
		if during == "" {
			during = put("stored by a pull during the collection")
		}
	}}
	ns, err := storage.NewRegistry(context.Background(), driver, storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	st := gc.Store{Name: "docker.io", Root: root, Driver: driver, NS: ns, Cluster: soleCluster{}, MaxUpload: time.Second}
	res, err := gc.Collect(context.Background(), st, gc.Policy{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if during == "" {
		t.Fatal("the collection never read its start marker")
	}
	if _, err := os.Stat(during); err != nil {
		t.Errorf("the blob stored during the collection was swept: %v", err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the blob stored an hour before was kept")
	}
	if res.FreedBlobs != 1 {
		t.Errorf("freed %d blobs, want 1", res.FreedBlobs)
	}
}
