package gc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// lockName is the file a serving process holds an exclusive flock on in each
// storage root, so an offline collection cannot run under a live server.
const lockName = ".multiproxy.lock"

// ErrLocked means another process (a running server) owns the store.
var ErrLocked = errors.New("storage is in use by a running multiproxy: use `multiproxy gc` without --offline")

// LockStore takes the store's lock for the life of a process. The kernel
// drops it when the process dies, kill -9 included.
func LockStore(root string) (unlock func(), err error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("lock %s: %w", root, err)
	}
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
	return func() { f.Close() }, nil
}

// Offline collects a store no server is using.
func Offline(ctx context.Context, name, root string, p Policy, dryRun bool) (Result, error) {
	unlock, err := LockStore(root)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	ns, err := storage.NewRegistry(ctx, driver, storage.EnableDelete)
	if err != nil {
		return Result{}, fmt.Errorf("open %s: %w", root, err)
	}
	return Collect(ctx, Store{Name: name, Root: root, Driver: driver, NS: ns}, p, dryRun, nil)
}
