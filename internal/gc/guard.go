package gc

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// Guard records what the cache relies on while a collection runs. It
// implements cache.Guard.
//
// Two mechanisms close the window around a collection's start:
//   - Use records digests claimed while the collection is active;
//   - Hold brackets work that relies on the store (a write, or serving a
//     manifest). begin waits for every hold taken before it switched the
//     Guard on, so work that claimed its digests while the Guard was off has
//     finished before the scan starts. A hold never waits for a collection
//     to finish, so holds nest; holds taken after begin are not waited for,
//     so a busy cache cannot starve a collection either.
//
// Pulls do wait on a collection briefly: the sweep deletes each blob and
// manifest under the Guard's mutex (deleteUnlessUsed), so that a claim
// either lands before the delete, which then skips the digest, or after
// it; meanwhile every Use and Hold of this store waits for that one
// delete, a syscall on a filesystem and a request on a bucket.
type Guard struct {
	mu     sync.Mutex
	cond   *sync.Cond
	active bool
	used   map[digest.Digest]struct{}
	epoch  uint64
	holds  map[uint64]int // epoch -> holds in flight taken in it
}

func (g *Guard) initLocked() {
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
		g.holds = map[uint64]int{}
	}
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

// Hold implements cache.Guard.
func (g *Guard) Hold() (release func()) {
	g.mu.Lock()
	g.initLocked()
	e := g.epoch
	g.holds[e]++
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		if g.holds[e]--; g.holds[e] == 0 {
			delete(g.holds, e)
			g.cond.Broadcast()
		}
		g.mu.Unlock()
	}
}

func (g *Guard) begin() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initLocked()
	g.active = true
	g.used = map[digest.Digest]struct{}{}
	before := g.epoch
	g.epoch++
	for g.heldSinceLocked(before) {
		g.cond.Wait()
	}
}

// heldSinceLocked reports holds in flight from epochs up to e.
func (g *Guard) heldSinceLocked(e uint64) bool {
	for k, n := range g.holds {
		if k <= e && n > 0 {
			return true
		}
	}
	return false
}

func (g *Guard) end() {
	g.mu.Lock()
	g.active = false
	g.used = nil
	g.mu.Unlock()
}

// deleteUnlessUsed runs del for d under the lock unless d was used since the
// collection began. It reports whether del ran. Use and Hold wait for del:
// it must be one delete, not a walk.
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
