package gc

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// Guard records what the cache relies on while a collection runs. It
// implements cache.Guard.
type Guard struct {
	// writes is held shared by every cache write in progress and
	// exclusively by begin: a write that claimed its digests before the
	// collection began has landed on disk before the scan starts, so the
	// scan sees it.
	writes sync.RWMutex

	mu     sync.Mutex
	active bool
	used   map[digest.Digest]struct{}
}

// Hold implements cache.Guard: it brackets a write into the store.
func (g *Guard) Hold() (release func()) {
	g.writes.RLock()
	return g.writes.RUnlock
}

// Use implements cache.Guard. Outside a collection it costs one uncontended
// lock.
func (g *Guard) Use(ds ...digest.Digest) {
	g.mu.Lock()
	if g.active {
		for _, d := range ds {
			g.used[d] = struct{}{}
		}
	}
	g.mu.Unlock()
}

func (g *Guard) begin() {
	g.writes.Lock()
	defer g.writes.Unlock()
	g.mu.Lock()
	g.active = true
	g.used = map[digest.Digest]struct{}{}
	g.mu.Unlock()
}

func (g *Guard) end() {
	g.mu.Lock()
	g.active = false
	g.used = nil
	g.mu.Unlock()
}

// deleteUnlessUsed runs del for d under the lock unless d was used since the
// collection began. It reports whether del ran.
func (g *Guard) deleteUnlessUsed(d digest.Digest, del func() error) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.used[d]; ok {
		return false, nil
	}
	return true, del()
}

func (g *Guard) wasUsed(d digest.Digest) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.used[d]
	return ok
}
