package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// spoolOf writes content as a verified spool file would be, and returns
// its digest.
func spoolOf(t *testing.T, dir, content string) (digest.Digest, string) {
	t.Helper()
	sum := sha256.Sum256([]byte(content))
	p := filepath.Join(dir, "spool-"+hex.EncodeToString(sum[:4]))
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(sum[:])), p
}

// The local copies stay under max_size, the least recently served going
// first; a copy being read survives its eviction for its reader.
func TestTierEvictsLeastRecentlyServed(t *testing.T) {
	dir := t.TempDir()
	tr, err := openTier(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	a, pa := spoolOf(t, dir, "aaaa")
	b, pb := spoolOf(t, dir, "bbbb")
	c, pc := spoolOf(t, dir, "cccc")
	for _, x := range []struct {
		d digest.Digest
		p string
	}{{a, pa}, {b, pb}} {
		if err := tr.add(x.d, x.p, 4); err != nil {
			t.Fatal(err)
		}
	}
	reader, ok := tr.open(a) // a is now the most recently served
	if !ok {
		t.Fatal("a not in the tier")
	}
	defer reader.Close()
	if err := tr.add(c, pc, 4); err != nil {
		t.Fatal(err)
	}
	if _, ok := tr.stat(b); ok {
		t.Error("b, the least recently served, was kept over max_size")
	}
	for _, d := range []digest.Digest{a, c} {
		if _, ok := tr.stat(d); !ok {
			t.Errorf("%s evicted", d)
		}
	}
	if _, err := os.Stat(tr.path(b)); !os.IsNotExist(err) {
		t.Errorf("b's file is still on disk: %v", err)
	}
	// Evicting a for space leaves its open reader whole.
	tr.evict(100, "")
	buf := make([]byte, 4)
	if n, err := reader.ReadAt(buf, 0); n != 4 || string(buf) != "aaaa" {
		t.Errorf("reader of an evicted copy read %q, %v", buf[:n], err)
	}
}

// A restart keeps the warm set, in the order it was served, and drops
// what is not a whole copy.
func TestTierSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	tr, err := openTier(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	old, po := spoolOf(t, dir, "old!")
	recent, pr := spoolOf(t, dir, "new!")
	if err := tr.add(old, po, 4); err != nil {
		t.Fatal(err)
	}
	if err := tr.add(recent, pr, 4); err != nil {
		t.Fatal(err)
	}
	// old was added first but served last: serving it must count.
	for _, d := range []digest.Digest{old, recent} {
		past := time.Now().Add(-time.Hour)
		if err := os.Chtimes(tr.path(d), past, past); err != nil {
			t.Fatal(err)
		}
		el := tr.items[d]
		e := el.Value.(tierEntry)
		e.touched = past
		el.Value = e
	}
	f, ok := tr.open(old)
	if !ok {
		t.Fatal("old not in the tier")
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "blobs", "not-a-digest"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := openTier(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{old, recent} {
		if n, ok := again.stat(d); !ok || n != 4 {
			t.Errorf("%s after restart: %d, %v", d, n, ok)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "not-a-digest")); !os.IsNotExist(err) {
		t.Error("a stray file in the tier survived the restart")
	}
	again.evict(1, "")
	if _, ok := again.stat(old); !ok {
		t.Error("eviction after restart took the most recently served copy first")
	}
	if _, ok := again.stat(recent); ok {
		t.Error("eviction after restart spared the least recently served copy")
	}
}
