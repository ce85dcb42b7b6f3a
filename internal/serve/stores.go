package serve

import (
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/gc"
)

// stores is what this process holds on the storage it serves: one lock per
// storage root, which keeps an offline collection out while the store is
// served, and one free-space accountant per filesystem, shared by every
// upstream stored on it.
type stores struct {
	log *slog.Logger

	mu     sync.Mutex
	locks  map[string]*gc.StoreLock // storage root -> its lock
	spaces map[uint64]*disk.Space   // filesystem -> its accountant
}

func newStores(log *slog.Logger) *stores {
	return &stores{log: log, locks: map[string]*gc.StoreLock{}, spaces: map[uint64]*disk.Space{}}
}

// hold takes the lock of a storage root.
func (s *stores) hold(root string) error {
	lock, err := gc.HoldStore(root)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.locks[root] = lock
	s.mu.Unlock()
	return nil
}

// release gives up the lock of root unless inUse says the root is still
// served. inUse is asked under the stores' lock, so that no other release
// decides on the same root meanwhile.
func (s *stores) release(root string, inUse func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lock := s.locks[root]; lock != nil && (inUse == nil || !inUse()) {
		lock.Unlock()
		delete(s.locks, root)
	}
}

// releaseAll gives up every lock, once the servers are closed.
func (s *stores) releaseAll() {
	s.mu.Lock()
	locks := s.locks
	s.locks = map[string]*gc.StoreLock{}
	s.mu.Unlock()
	for _, lock := range locks {
		lock.Unlock()
	}
}

// relock takes the storage lock again in a store that was deleted and
// recreated under the process: the lock held was on the deleted file, and an
// offline collection must be refused for as long as the store is served.
func (s *stores) relock(name, root string) {
	s.mu.Lock()
	lock := s.locks[root]
	s.mu.Unlock()
	if lock == nil {
		return
	}
	again, err := lock.Relock()
	if err != nil {
		// The process serves the store regardless; the operator must know
		// that an offline collection is not kept out of it.
		s.log.Error("storage lock not held after the store was recreated", "upstream", name, "dir", root, "err", err)
		return
	}
	if again {
		s.log.Warn("storage lock taken again in the recreated store", "upstream", name, "dir", root)
	}
}

// spaceFor returns the free-space accountant of the filesystem holding
// root, shared by every upstream stored on it: their fills draw on the same
// free bytes.
func (s *stores) spaceFor(root string) (*disk.Space, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create storage root: %w", err)
	}
	dev, err := disk.Device(root)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.spaces[dev]; sp != nil {
		return sp, nil
	}
	sp := disk.New(root)
	s.spaces[dev] = sp
	return sp, nil
}

// localDir is where an upstream writes on this host: its store, or with
// a bucket its spool and local copies.
func localDir(u config.Upstream) string {
	if u.Storage.S3.Enabled() {
		return u.Storage.LocalCache.Dir
	}
	return u.Storage.Path
}
