package gc

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// lockName is the file a serving process holds an exclusive flock on in each
// storage root, so an offline collection cannot run under a live server.
const lockName = ".multiproxy.lock"

// ErrLocked means another process (a running server) owns the store.
var ErrLocked = errors.New("storage is in use by a running multiproxy: use `multiproxy gc` without --offline")

// LockStore takes the store's lock until unlock is called; see HoldStore.
func LockStore(root string) (unlock func(), err error) {
	l, err := HoldStore(root)
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
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
