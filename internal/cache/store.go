package cache

// The store's condition: failed writes remembered until one succeeds, and
// its directories recreated when they are deleted under the process.

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// storageProblem is a failed write to the store, kept until one succeeds.
type storageProblem struct {
	op    string
	err   error
	since time.Time
}

// StorageProblem says why the store cannot be written now: the operation
// that failed last, since when, and the error (for the log and operators,
// never for clients). It is nil while writes succeed.
func (c *Cache) StorageProblem() (op string, since time.Time, err error) {
	p := c.problem.Load()
	if p == nil {
		return "", time.Time{}, nil
	}
	return p.op, p.since, p.err
}

// storageFailed records a failed write; the first failure of a run of them
// is logged, the rest only counted.
func (c *Cache) storageFailed(op string, err error) {
	c.obs.StorageError(op)
	prev := c.problem.Load()
	since := time.Now()
	if prev != nil {
		since = prev.since
	} else {
		c.log.Error("storage write failed; serving without storing until it works again", "op", op, "err", err)
	}
	c.problem.Store(&storageProblem{op: op, err: err, since: since})
}

// storageWorked clears a recorded storage problem.
func (c *Cache) storageWorked() {
	if c.problem.Swap(nil) != nil {
		c.log.Info("storage writable again")
	}
}

// ensureRoot recreates the store's root if it was deleted under the process,
// so that the driver, which would recreate it silently, never writes into a
// store whose lock is gone. A manifest may be the first write to a
// recreated store: a pull by tag writes it before any blob is spooled.
// The lock is checked even when the root is there: a write elsewhere in
// the store (a link, a pull's record) may have recreated it through the
// driver since it was deleted. The check is two stats, on a cold
// manifest's write only.
func (c *Cache) ensureRoot() {
	if c.shared != nil {
		return
	}
	if _, err := os.Stat(c.root); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(c.root, 0o750); err != nil {
			return // the write that follows fails and says why
		}
		c.log.Warn("recreated the storage directory", "dir", c.root)
	}
	c.storeRecreated()
}

func (c *Cache) storeRecreated() {
	if c.remade != nil {
		c.remade()
	}
}

// removeTemps deletes the driver's leftover temporary files (*.tmp) in dirs.
func (c *Cache) removeTemps(dirs ...string) {
	for _, dir := range dirs {
		tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
		for _, f := range tmps {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				c.log.Debug("remove temporary file", "err", err)
			}
		}
	}
}
