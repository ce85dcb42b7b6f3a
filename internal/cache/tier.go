package cache

import (
	"container/list"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// tier is a replica's bounded local copy of blobs whose home is a shared
// bucket: a warm blob still goes out by sendfile, and a replica does not
// pull the same bytes from the bucket for every client. Entries are whole,
// verified blobs named by digest; the least recently served go first when
// the tier is over its size or the disk is short of space. Removing an
// entry never breaks a client reading it: its descriptor stays valid.
type tier struct {
	dir string
	max int64 // 0: bounded only by the disk watermark

	mu    sync.Mutex
	size  int64
	order *list.List // front: most recently served
	items map[digest.Digest]*list.Element
}

type tierEntry struct {
	d       digest.Digest
	size    int64
	touched time.Time // last mtime written, at most once per accessGranularity
}

// openTier indexes what a previous process left in dir, oldest access
// last, so that an upgrade or restart keeps the warm set.
func openTier(dir string, max int64) (*tier, error) {
	t := &tier{dir: dir, max: max, order: list.New(), items: map[digest.Digest]*list.Element{}}
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o750); err != nil {
		return nil, fmt.Errorf("create local cache: %w", err)
	}
	ents, err := os.ReadDir(blobs)
	if err != nil {
		return nil, fmt.Errorf("read local cache: %w", err)
	}
	type found struct {
		e     tierEntry
		mtime time.Time
	}
	var all []found
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		fi, err := e.Info()
		if err != nil || d.Validate() != nil || !fi.Mode().IsRegular() {
			_ = os.RemoveAll(filepath.Join(blobs, e.Name()))
			continue
		}
		all = append(all, found{tierEntry{d: d, size: fi.Size(), touched: fi.ModTime()}, fi.ModTime()})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.After(all[j].mtime) })
	for _, f := range all {
		t.items[f.e.d] = t.order.PushBack(f.e)
		t.size += f.e.size
	}
	return t, nil
}

func (t *tier) path(d digest.Digest) string {
	return filepath.Join(t.dir, "blobs", d.Encoded())
}

// open returns the local copy of d and marks it served.
func (t *tier) open(d digest.Digest) (*os.File, bool) {
	if d.Algorithm() != digest.SHA256 || d.Validate() != nil {
		return nil, false
	}
	now := time.Now()
	touch := false
	t.mu.Lock()
	el, ok := t.items[d]
	if ok {
		t.order.MoveToFront(el)
		if e := el.Value.(tierEntry); now.Sub(e.touched) >= accessGranularity {
			e.touched, touch = now, true
			el.Value = e
		}
	}
	t.mu.Unlock()
	if !ok {
		return nil, false
	}
	if touch {
		// The mtime is the order a restart rebuilds (openTier).
		_ = os.Chtimes(t.path(d), now, now)
	}
	f, err := os.Open(t.path(d))
	if err != nil {
		t.drop(d)
		return nil, false
	}
	return f, true
}

// stat returns the size of d's local copy.
func (t *tier) stat(d digest.Digest) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.items[d]; ok {
		return el.Value.(tierEntry).size, true
	}
	return 0, false
}

func (t *tier) drop(d digest.Digest) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.items[d]; ok {
		t.size -= el.Value.(tierEntry).size
		t.order.Remove(el)
		delete(t.items, d)
	}
}

// add moves a verified spool file into the tier and evicts past max.
func (t *tier) add(d digest.Digest, spool string, size int64) error {
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("local cache holds sha256 blobs only, not %s", d.Algorithm())
	}
	if err := os.Rename(spool, t.path(d)); err != nil {
		if mkErr := os.MkdirAll(filepath.Dir(t.path(d)), 0o750); mkErr != nil {
			return fmt.Errorf("add to local cache: %w", err)
		}
		if err := os.Rename(spool, t.path(d)); err != nil {
			return fmt.Errorf("add to local cache: %w", err)
		}
	}
	t.mu.Lock()
	if el, ok := t.items[d]; ok {
		t.size -= el.Value.(tierEntry).size
		t.order.Remove(el)
	}
	t.items[d] = t.order.PushFront(tierEntry{d: d, size: size, touched: time.Now()})
	t.size += size
	var over int64
	if t.max > 0 && t.size > t.max {
		over = t.size - t.max
	}
	t.mu.Unlock()
	if over > 0 {
		t.evict(over, d)
	}
	return nil
}

// evict removes least recently served copies until n bytes are freed,
// sparing keep, and returns the bytes freed.
func (t *tier) evict(n int64, keep digest.Digest) int64 {
	var freed int64
	for freed < n {
		t.mu.Lock()
		el := t.order.Back()
		for el != nil && el.Value.(tierEntry).d == keep {
			el = el.Prev()
		}
		if el == nil {
			t.mu.Unlock()
			break
		}
		e := el.Value.(tierEntry)
		t.order.Remove(el)
		delete(t.items, e.d)
		t.size -= e.size
		t.mu.Unlock()
		if err := os.Remove(t.path(e.d)); err == nil || os.IsNotExist(err) {
			freed += e.size
		}
	}
	return freed
}

// bytes is what the tier holds now.
func (t *tier) bytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.size
}
