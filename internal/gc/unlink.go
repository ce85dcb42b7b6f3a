package gc

// After the sweep: repositories' links to swept blobs, and the directories
// of repositories that never held a manifest.

import (
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// unlinkLayers removes repositories' links to swept blobs, so no repository
// claims a blob the store no longer has. It also removes what a directory
// holding no manifest has (_layers, _uploads): versions before the cache
// linked only into repositories with a manifest wrote a repository for
// every name a blob was read under. distribution's catalog and the scan
// (scanManifests) skip such directories, so nothing else would ever remove them. It
// returns how many it removed.
//
// A pull storing a repository's first manifest while this runs can lose the
// links it writes meanwhile: the _manifests directory is looked at again
// just before the removal, which leaves microseconds, and a lost link only
// costs one more Stat when the blob is next read there (links are not read
// for serving, and collections mark from manifests).
func unlinkLayers(ctx context.Context, st Store, swept []digest.Digest) (int, error) {
	gone := map[string]bool{}
	for _, d := range swept {
		gone[d.Encoded()] = true
	}
	// One walk, as distribution's catalog does it, noting which
	// repositories hold manifests instead of listing only those.
	held := map[string]bool{}
	var found []string // the _layers and _uploads directories, in driver paths
	err := st.Driver.Walk(ctx, storelayout.RepositoriesRoot, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			return nil
		}
		dir, base := path.Split(fi.Path())
		switch {
		case base == storelayout.ManifestsDir:
			held[path.Clean(dir)] = true
			return storagedriver.ErrSkipDir
		case base == storelayout.LayersDir || base == storelayout.UploadsDir:
			found = append(found, fi.Path())
			return storagedriver.ErrSkipDir
		case strings.HasPrefix(base, "_"):
			return storagedriver.ErrSkipDir
		}
		return nil
	})
	if err != nil {
		if isPathNotFound(err) {
			return 0, nil
		}
		return 0, err
	}
	var removed []string
	seen := map[string]bool{}
	for _, dir := range found {
		repoDir := path.Dir(dir)
		if held[repoDir] {
			if path.Base(dir) != storelayout.LayersDir || len(gone) == 0 {
				continue
			}
			links, err := st.Driver.List(ctx, path.Join(dir, "sha256"))
			if err != nil {
				if isPathNotFound(err) {
					continue
				}
				return len(removed), err
			}
			for _, l := range links {
				if gone[path.Base(l)] {
					if err := st.Driver.Delete(ctx, l); err != nil && !isPathNotFound(err) {
						return len(removed), err
					}
				}
			}
			continue
		}
		if _, err := st.Driver.Stat(ctx, path.Join(repoDir, storelayout.ManifestsDir)); err == nil {
			continue // its first manifest came during the walk
		}
		if err := st.Driver.Delete(ctx, dir); err != nil && !isPathNotFound(err) {
			return len(removed), err
		}
		if !seen[repoDir] {
			seen[repoDir] = true
			removed = append(removed, repoDir)
		}
	}
	if st.Driver.Name() == "filesystem" && st.Root != "" {
		for _, repoDir := range removed {
			removeEmptyDirs(st.Root, repoDir)
		}
	}
	return len(removed), nil
}

// removeEmptyDirs removes a repository's directory on the filesystem and
// its parents up to the repositories root, for as long as they are empty.
// rmdir, unlike the driver's Delete, never removes what a pull wrote there
// meanwhile.
func removeEmptyDirs(root, repoDir string) {
	for dir := repoDir; dir != storelayout.RepositoriesRoot && dir != "/" && dir != "."; dir = path.Dir(dir) {
		if os.Remove(filepath.Join(root, filepath.FromSlash(dir))) != nil {
			return
		}
	}
}
