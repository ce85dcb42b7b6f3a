package ha

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestCollectionGoesByTheBucketsClock: the object store's clock is 5
// minutes behind the collector's. A collection runs while clients pull
// through all three replicas, and one replica's upload of a blob lands in
// the bucket during it, with nothing in the cluster claiming or
// referencing that blob yet: the upload began before the collection was
// announced (so its claim went nowhere) and the manifest was never
// fetched through the cache, as when a client that has it fetches one
// layer by digest. Every object written during the collection is still in
// the bucket afterwards, every pull succeeded, every manifest the bucket
// holds has all its blobs, and the collection still evicted and swept the
// least recently pulled image.
//
// The skew is made at the S3 API by ts.S3Gate, which reports every
// LastModified 5 minutes earlier than versitygw stamps it. Running
// versitygw under Debian's faketime, as the issue suggests, does not skew
// anything: versitygw is a Go binary, which reads the clock through the
// vDSO rather than through libc where faketime hooks in, and its posix
// backend reports an object's LastModified from the file's mtime, which
// the kernel stamps with the real time.
func TestCollectionGoesByTheBucketsClock(t *testing.T) {
	up := tokenCDN(t)
	old := up.Push(t, "team/old:v1", 6, 256<<10)
	up.Push(t, "team/hot:v1", 2, 256<<10)
	layer := ts.LayerDigests(t, up.Push(t, "team/new:v1", 1, 256<<10))[0]
	var gate *ts.S3Gate
	c := startCluster(t, up, 3, options{
		extra: "    max_size: 1MiB\n    fill_timeout: 1m\n",
		s3Endpoint: func(_ int, gateway string) string {
			if gate == nil {
				gate = ts.StartS3GateAt(t, gateway, ts.S3GateOptions{Lag: 5 * time.Minute})
			}
			return gate.URL
		}})
	a, writer := c.replicas[0], c.replicas[2]
	if err := pullAll(a, "team/old:v1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // pull times have one-second resolution
	for _, r := range c.replicas {
		if err := pullAll(r, "team/hot:v1"); err != nil {
			t.Fatal(err)
		}
	}
	// A first collection ends, so that replicas know none runs: what they
	// serve from then on is claimed only once one is announced. Until a
	// replica has seen one, it keeps what it serves for the next
	// collection (Redis may have lost the announcement), which would spare
	// it: so every replica serves something before.
	if code, body := collect(t, c.replicas[1]); code != http.StatusOK {
		t.Fatalf("first collection: %d %s", code, body)
	}
	// What is stored so far was stored an hour ago (versitygw's
	// LastModified is the file's mtime): older than the next collection's
	// start by more than fill_timeout, so the rule lets it be swept.
	blobs := filepath.Join(c.s3.Dir, "multiproxy", upstreamName, "docker", "registry", "v2", "blobs")
	hourAgo := time.Now().Add(-time.Hour)
	if err := filepath.WalkDir(blobs, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		return os.Chtimes(p, hourAgo, hourAgo)
	}); err != nil {
		t.Fatal(err)
	}

	// The choreography, at the bucket: the writer's upload of the layer
	// is completed only after the collection wrote its start marker; the
	// collector reads the marker back only once the upload landed, so the
	// layer is among the blobs it lists; and the writer hears that its
	// upload completed (and then claims the layer) only once the
	// collection is over. Until then nothing but the layer's age tells the
	// collector that it is new.
	xKey := blobKey(layer)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	var (
		uploading, marked, landed, decided    = make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
		onceUploading, onceMarked, onceLanded sync.Once
		mu                                    sync.Mutex
		during                                []string
	)
	wait := func(ch chan struct{}) {
		select {
		case <-ch:
		case <-done:
		}
	}
	isMarker := func(k string) bool { return strings.HasSuffix(k, "/multiproxy/gc-start") }
	gate.After(func(s ts.S3Call) bool { return s.Op == "PutObject" && isMarker(s.Key) }, func(ts.S3Call) {
		onceMarked.Do(func() { close(marked) })
	})
	// Every blob written once the collection started.
	gate.After(func(s ts.S3Call) bool {
		return s.Status == http.StatusOK && strings.Contains(s.Key, "/blobs/") &&
			(s.Op == "PutObject" || s.Op == "CopyObject" || s.Op == "CompleteMultipartUpload")
	}, func(s ts.S3Call) {
		select {
		case <-marked:
			mu.Lock()
			during = append(during, s.Key)
			mu.Unlock()
		default:
		}
	})
	gate.Before(func(s ts.S3Call) bool { return s.Op == "CompleteMultipartUpload" && s.Key == xKey }, func(ts.S3Call) {
		onceUploading.Do(func() { close(uploading) })
		wait(marked)
	})
	gate.Before(func(s ts.S3Call) bool { return s.Op == "HeadObject" && isMarker(s.Key) }, func(ts.S3Call) {
		wait(landed)
	})
	gate.After(func(s ts.S3Call) bool { return s.Op == "CompleteMultipartUpload" && s.Key == xKey }, func(ts.S3Call) {
		onceLanded.Do(func() { close(landed) })
		wait(decided)
	})

	// The client has its bytes before the replica stores them for the
	// cluster, so the fetch may end first.
	fetched := make(chan error, 1)
	go func() { fetched <- fetchBlob(writer, "team/new", layer) }()
	select {
	case <-uploading:
	case <-time.After(60 * time.Second):
		t.Fatal("replica 2 never completed its upload of the layer")
	}
	pulls := startPulls(t, "team/hot:v1", c.replicas...)
	type answer struct {
		code int
		body string
	}
	collected := make(chan answer, 1)
	go func() {
		code, body := collect(t, a)
		collected <- answer{code, body}
	}()
	var got answer
	select {
	case got = <-collected:
	case <-time.After(2 * time.Minute):
		t.Fatal("the collection never returned")
	}
	code, body := got.code, got.body
	close(decided)
	pulls.end(t)
	select {
	case err := <-fetched:
		if err != nil {
			t.Errorf("fetch of the layer by digest: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the layer's fetch never ended")
	}

	if code != http.StatusOK {
		t.Fatalf("collection: %d %s", code, body)
	}
	t.Logf("collection: %s", body)
	if f := pulls.failures.Load(); f != 0 {
		t.Errorf("%d of %d pulls during the collection failed", f, pulls.pulls.Load())
	}
	mu.Lock()
	written := append([]string(nil), during...)
	mu.Unlock()
	if !strings.Contains(strings.Join(written, " "), xKey) {
		t.Errorf("the layer's upload did not land during the collection: written then %v", written)
	}
	for _, k := range written {
		if _, err := os.Stat(filepath.Join(c.s3.Dir, filepath.FromSlash(k))); err != nil {
			t.Errorf("%s, written during the collection, was swept: %v", k, err)
		}
	}
	if n := c.checkManifestsComplete(t); n < 1 {
		t.Error("the bucket holds no manifest: team/hot was evicted")
	}
	// The skewed clock did not stop the collection from doing its work.
	for _, d := range ts.LayerDigests(t, old) {
		if _, err := os.Stat(filepath.Join(c.s3.Dir, filepath.FromSlash(blobKey(d)))); !os.IsNotExist(err) {
			t.Errorf("layer %s of the evicted team/old is still in the bucket (%v)", d, err)
		}
	}
	for _, r := range c.replicas {
		if err := pullAll(r, "team/hot:v1"); err != nil {
			t.Errorf("pull after the collection: %v", err)
		}
	}
}

// fetchBlob GETs one blob by digest through r, as a client that has the
// manifest already does, and checks its bytes.
func fetchBlob(r *replica, repo, d string) error {
	resp, err := http.Get("http://" + r.listen + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("replica %d: GET blob %s: %s", r.i, d, resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("replica %d: blob %s: %w", r.i, d, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return fmt.Errorf("replica %d: blob %s: got bytes hashing to %s", r.i, d, got)
	}
	return nil
}
