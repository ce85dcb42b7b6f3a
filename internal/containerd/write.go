package containerd

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

// WriteAction is what WriteHosts did with one file.
type WriteAction = nodefile.Action

// WriteResult reports one file.
type WriteResult struct {
	Registry string
	Path     string
	Action   WriteAction
	// Backup is where the replaced hand-edited file was saved.
	Backup string
	// Shadowed names a "host_port_" directory that containerd reads in
	// preference to the one we wrote, which then has no effect.
	Shadowed string
}

// WriteOptions control WriteHosts.
type WriteOptions struct {
	// Force replaces hand-edited files, keeping a backup of each.
	Force bool
	// Now stamps backup names; nil means time.Now.
	Now func() time.Time
}

// WriteHosts writes each file to dir/<registry>/hosts.toml. It is
// idempotent: identical files are not rewritten, so their mtime stays and
// nothing watching the directory sees a change. Directories of registries
// not in files are never touched. A file that we did not generate, or that
// was edited since, is kept unless opts.Force; then a backup is kept next
// to it (containerd reads only hosts.toml, so the backup is inert).
func WriteHosts(dir string, files []HostsFile, opts WriteOptions) ([]WriteResult, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	results := make([]WriteResult, 0, len(files))
	for _, f := range files {
		res, err := writeHostsFile(dir, f, opts.Force, now)
		if err != nil {
			return results, err
		}
		results = append(results, res)
	}
	return results, nil
}

func writeHostsFile(dir string, f HostsFile, force bool, now func() time.Time) (WriteResult, error) {
	path := f.Path(dir)
	res := WriteResult{Registry: f.Registry, Path: path}
	if alt := hostDirectory(f.Registry); alt != f.Registry {
		if _, err := os.Stat(filepath.Join(dir, alt)); err == nil {
			res.Shadowed = filepath.Join(dir, alt)
		}
	}

	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		res.Action = nodefile.Created
	case err != nil:
		return res, fmt.Errorf("read %s: %w", path, err)
	case bytes.Equal(old, f.Content):
		res.Action = nodefile.Unchanged
		return res, nil
	case nodefile.Unedited(old):
		res.Action = nodefile.Updated
	case !force:
		res.Action = nodefile.Kept
		return res, nil
	default:
		res.Action = nodefile.Replaced
		backup, err := nodefile.Backup(path, old, now(), false)
		if err != nil {
			return res, err
		}
		res.Backup = backup
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return res, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := nodefile.WriteAtomic(path, f.Content, 0o644); err != nil {
		return res, err
	}
	return res, nil
}

// WriteConfig replaces a containerd config.toml with content, first saving
// the old file as path.<UTC timestamp>.bak. It writes nothing when the
// content is unchanged, and creates the file (and its directory) when
// there is none. The old file's permissions are kept.
func WriteConfig(path string, content []byte, now time.Time) (backup string, err error) {
	perm := os.FileMode(0o644)
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
		}
	case err != nil:
		return "", fmt.Errorf("read %s: %w", path, err)
	case bytes.Equal(old, content):
		return "", nil
	default:
		if st, err := os.Stat(path); err == nil {
			perm = st.Mode().Perm()
		}
		if backup, err = nodefile.Backup(path, old, now, true); err != nil {
			return "", err
		}
	}
	return backup, nodefile.WriteAtomic(path, content, perm)
}
