package disk

import (
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dsk "github.com/multiproxy/multiproxy/internal/disk"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// fillDisk writes a file next to the store (not the cache's) until the
// filesystem answers ENOSPC, and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err = f.Write(buf); err != nil {
				break
			}
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("filling %s: %v, want ENOSPC", dir, err)
		}
	}
	if u, err := dsk.Statfs(dir); err != nil || u.Free != 0 {
		t.Fatalf("after filling: %d bytes free (%v), want 0", u.Free, err)
	}
	return path
}

// tempFiles lists temporary files left in the store by interrupted writes
// (the storage driver writes "<name>.<uuid>.tmp" and renames it).
func tempFiles(storage string) []string {
	var out []string
	_ = filepath.WalkDir(storage, func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// TestFullDiskStillServesPulls: with the disk 100% full (by something other
// than the cache), an uncached manifest pull by tag answers 200 with the
// right digest, served from memory, not 500; the image's blobs pass
// through. Once the operator frees space, the next pull is stored again.
func TestFullDiskStillServesPulls(t *testing.T) {
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	// The second layer is larger than the pass-through window.
	im := pushImage(t, up, "library/app:1", 256<<10, 6<<20)
	p := startProxy(t, up, storage, nil)
	base := p.URL("docker.io")
	c := &http.Client{Timeout: 2 * time.Minute}

	filler := fillDisk(t, dir)
	status, d, err := getManifest(c, base, im.repo, im.tag)
	if status != http.StatusOK || err != nil || d != im.digest {
		t.Fatalf("manifest by tag on a full disk: %d %v, digest %s want %s", status, err, d, im.digest)
	}
	status, d, err = getManifest(c, base, im.repo, im.digest)
	if status != http.StatusOK || err != nil || d != im.digest {
		t.Fatalf("manifest by digest on a full disk: %d %v, digest %s want %s", status, err, d, im.digest)
	}
	for _, b := range im.blobs() {
		if err := fetchBlob(c, base, im.repo, b); err != nil {
			t.Fatalf("uncached blob on a full disk: %v", err)
		}
	}
	if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
		t.Fatalf("whole image on a full disk: %v", err)
	}
	settle(t, p, storage)
	if got := storedBlobs(storage); len(got) != 0 {
		t.Errorf("blobs stored on a full disk: %v", got)
	}
	if manifestStored(storage, im) {
		t.Error("a manifest was stored on a full disk")
	}
	if n := uncached(t, p, "no_space"); n != 2*float64(len(im.blobs())) {
		t.Errorf("multiproxy_fill_uncached_total{reason=no_space} = %v, want %d (every blob fetch)", n, 2*len(im.blobs()))
	}
	if n := p.Metric(t, "multiproxy_storage_errors_total", map[string]string{"upstream": "docker.io", "op": "manifest"}); n < 1 {
		t.Errorf("multiproxy_storage_errors_total{op=manifest} = %v, want the failed manifest writes counted", n)
	}

	// The operator frees space: the next pull is cached again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := ts.PullVerified(c, base, im.repo, im.tag); err != nil {
		t.Fatalf("pull after freeing space: %v", err)
	}
	settle(t, p, storage)
	ts.WaitFor(t, 30*time.Second, "the image is stored once space is free", func() bool {
		if !manifestStored(storage, im) {
			return false
		}
		for _, b := range im.blobs() {
			if !blobStored(storage, b) {
				return false
			}
		}
		return true
	})
	f.ResetCounts()
	if err := ts.PullVerified(c, base, im.repo, im.digest); err != nil {
		t.Fatalf("pull from the cache: %v", err)
	}
	if n := f.Count("GET", "/blobs/"); n != 0 {
		t.Errorf("a pull of the now cached image made %d upstream blob GETs, want 0", n)
	}
}

// TestFullDiskLeavesNoTempFiles: a manifest the full disk refused must not
// leave files behind in the store. distribution's filesystem driver
// (v3.1.2) writes "<path>.<uuid>.tmp" and renames it, but when the final
// flush fails with ENOSPC (PutContent's writer.Commit) it returns without
// removing the temporary file: every refused manifest write leaves one,
// which nothing ever cleans up.
func TestFullDiskLeavesNoTempFiles(t *testing.T) {
	dir := mountTmpfs(t)
	storage := filepath.Join(dir, "docker.io")
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	im := pushImage(t, up, "library/app:1", 1024)
	p := startProxy(t, up, storage, nil)
	c := &http.Client{Timeout: time.Minute}
	fillDisk(t, dir)
	for range 3 {
		if status, d, err := getManifest(c, p.URL("docker.io"), im.repo, im.tag); status != http.StatusOK || err != nil || d != im.digest {
			t.Fatalf("manifest on a full disk: %d %v %s", status, err, d)
		}
	}
	if left := tempFiles(storage); len(left) > 0 {
		t.Errorf("%d refused manifest writes left %d temporary files in the store: %v", 3, len(left), left)
	}
}
