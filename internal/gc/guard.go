package gc

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// Guard records what the cache relies on while a collection runs. It
// implements cache.Guard.
type Guard struct {
	mu     sync.Mutex
	active bool
	used   map[digest.Digest]struct{}
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
