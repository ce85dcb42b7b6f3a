package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestKillAfterLastByteNeverLeavesATornBlob: a client gets the last byte of
// a cold blob as soon as it is verified, before the fill is fsynced and
// renamed into the store. kill -9 the process right then (before, during or
// just after the fsync and rename, with a few sizes), restart it on the same
// storage: the blob the restarted cache serves verifies, and every blob
// file in the store always hashes to its digest.
//
// The store is on the real disk rather than tmpfs, where an fsync costs
// something and the kill has a window to land in.
func TestKillAfterLastByteNeverLeavesATornBlob(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	dir := t.TempDir()
	storage := filepath.Join(dir, "docker.io")
	addr := ts.FreeAddr(t)
	cfgFile := filepath.Join(dir, "multiproxy.yaml")
	yaml := fmt.Sprintf(`data_dir: %s
shutdown_timeout: 1s
admin:
  listen: %s
upstreams:
  - name: docker.io
    listen: %q
    remote: %s
    storage: %s
    timeout: 10s
`, filepath.Join(dir, "data"), ts.FreeAddr(t), addr, up.URL(), storage)
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr
	c := &http.Client{Timeout: 2 * time.Minute}

	rounds := []struct {
		size  int64
		delay time.Duration // between the last byte and the kill
	}{
		{32 << 20, 0},
		{16<<20 + 7, 0},
		{8 << 20, time.Millisecond},
		{3<<20 + 1, 0},
		{1 << 20, 5 * time.Millisecond},
	}
	committedBeforeKill := 0
	for i, r := range rounds {
		im := pushImage(t, up, fmt.Sprintf("library/kill%d:1", i), r.size)
		layer := im.layers[0]
		proc := ts.StartChild(t, cfgFile, addr)
		if err := pullThenKill(t, c, base, im.repo, layer, proc, r.delay); err != nil {
			t.Fatalf("round %d (%d bytes): %v\nchild log:\n%s", i, r.size, err, proc.Logs())
		}
		leftover := len(spoolFiles(storage))
		committedBefore := blobStored(storage, layer)
		if committedBefore {
			committedBeforeKill++
		}
		checkStore(t, storage, fmt.Sprintf("round %d, after the kill", i))

		proc = ts.StartChild(t, cfgFile, addr)
		if err := fetchBlob(c, base, im.repo, layer); err != nil {
			t.Fatalf("round %d: the restarted cache served: %v\nchild log:\n%s", i, err, proc.Logs())
		}
		ts.WaitFor(t, 60*time.Second, "the blob is stored after the restart", func() bool { return blobStored(storage, layer) })
		if err := fetchBlob(c, base, im.repo, layer); err != nil {
			t.Fatalf("round %d: the restarted cache served the stored blob: %v", i, err)
		}
		checkStore(t, storage, fmt.Sprintf("round %d, after the restart", i))
		// The killed fill's spool file, if the kill left one, is gone too.
		ts.WaitFor(t, 30*time.Second, "no spool file left after the restart", func() bool { return len(spoolFiles(storage)) == 0 })
		t.Logf("round %d: %d bytes, killed %v after the last byte: committed before the kill: %v, spool files left: %d",
			i, r.size, r.delay, committedBefore, leftover)
		proc.Kill(t)
	}
	t.Logf("%d of %d blobs were committed before the kill landed", committedBeforeKill, len(rounds))
}

// pullThenKill GETs a cold blob through proc and SIGKILLs proc the moment
// the body's last byte is in (after delay), then checks the body.
func pullThenKill(t *testing.T, c *http.Client, base, repo, d string, proc *ts.Child, delay time.Duration) error {
	resp, err := c.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength <= 0 {
		return fmt.Errorf("status %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var got int64
	for got < resp.ContentLength {
		n, err := resp.Body.Read(buf)
		h.Write(buf[:n])
		got += int64(n)
		if err != nil && got < resp.ContentLength {
			return fmt.Errorf("after %d of %d bytes: %w", got, resp.ContentLength, err)
		}
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	proc.Kill(t) // SIGKILL, and wait for the exit
	if sum := "sha256:" + hex.EncodeToString(h.Sum(nil)); sum != d {
		return fmt.Errorf("the client got bytes hashing to %s, want %s", sum, d)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// checkStore fails the test if any blob file in the store does not hash to
// the digest it is stored under.
func checkStore(t *testing.T, storage, when string) {
	t.Helper()
	for _, d := range storedBlobs(storage) {
		if got, err := hashFile(blobPath(storage, d)); err != nil || got != d {
			t.Errorf("%s: the store holds a torn blob: %s hashes to %s (%v)", when, d, got, err)
		}
	}
}
