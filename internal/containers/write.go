package containers

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// GeneratedUnedited reports whether content is a file multiproxy wrote and
// nobody has changed since.
func GeneratedUnedited(content []byte) bool { return nodefile.Unedited(content) }

// Action is what writing one file did.
type Action = nodefile.Action

// Result reports one written file.
type Result struct {
	Path   string
	Action Action
	// Backup is where the replaced hand-edited file was saved.
	Backup string
}

// WriteOptions control WriteFile.
type WriteOptions struct {
	// Force replaces a hand-edited file, keeping a backup.
	Force bool
	// Now stamps backup names when path.bak is taken; nil means time.Now.
	Now func() time.Time
}

// WriteFile writes a generated file (one carrying the marker) to path. It
// is idempotent: identical content is not rewritten, so the mtime stays. A
// file that we did not generate, or that was edited since, is kept unless
// opts.Force; then it is saved as path.bak first (containers/image reads
// only *.conf from registries.conf.d, so the backup is inert).
func WriteFile(path string, content []byte, opts WriteOptions) (Result, error) {
	return writeFile(path, content, opts, GeneratedUnedited)
}

// writeFile is WriteFile with the test for "we generated it and nobody
// edited it" as a parameter: daemon.json, which cannot carry a marker,
// decides that by content.
func writeFile(path string, content []byte, opts WriteOptions, ours func([]byte) bool) (Result, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	res := Result{Path: path}
	perm := os.FileMode(0o644)
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		res.Action = nodefile.Created
	case err != nil:
		return res, fmt.Errorf("read %s: %w", path, err)
	case bytes.Equal(old, content):
		res.Action = nodefile.Unchanged
		return res, nil
	case ours(old):
		res.Action = nodefile.Updated
	case !opts.Force:
		res.Action = nodefile.Kept
		return res, nil
	default:
		res.Action = nodefile.Replaced
		if res.Backup, err = nodefile.Backup(path, old, now(), false); err != nil {
			return res, err
		}
	}
	if st, err := os.Stat(path); err == nil {
		perm = st.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return res, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	return res, nodefile.WriteAtomic(path, content, perm)
}
