package gc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// StoreLock is a serving process's hold on a store's lock file. The flock
// belongs to the file's inode, not to its name: once the store is deleted
// (an operator's rm -rf, a replaced disk) and recreated, the lock held is on
// a file nobody can open any more, and an offline collection would create a
// new one and run under the live server. Relock takes the lock again in
// the recreated store.
type StoreLock struct {
	root string

	mu sync.Mutex
	f  *os.File // nil once unlocked
}

// HoldStore takes the store's lock for the life of a process, creating the
// root if need be. The kernel drops it when the process dies, kill -9
// included.
func HoldStore(root string) (*StoreLock, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("lock %s: %w", root, err)
	}
	f, err := lockFile(root)
	if err != nil {
		return nil, err
	}
	return &StoreLock{root: root, f: f}, nil
}

func lockFile(root string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", root, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", root, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", root, err)
	}
	return f, nil
}

// Relock makes sure the lock held is the one in the store as it is now.
// Call it whenever the store may have been recreated; it costs two stats
// when nothing changed. It reports whether it took the lock again. A store
// whose root is gone is left alone: there is nothing to guard until it is
// recreated, and creating it here would race the deletion.
func (l *StoreLock) Relock() (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return false, nil
	}
	path := filepath.Join(l.root, lockName)
	onDisk, err := os.Stat(path)
	switch {
	case err == nil:
		if held, herr := l.f.Stat(); herr == nil && os.SameFile(onDisk, held) {
			return false, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("lock %s: %w", l.root, err)
	}
	if _, err := os.Stat(l.root); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	f, err := lockFile(l.root)
	if err != nil {
		return false, err
	}
	l.f.Close()
	l.f = f
	return true, nil
}

// Unlock releases the lock; later calls do nothing.
func (l *StoreLock) Unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
