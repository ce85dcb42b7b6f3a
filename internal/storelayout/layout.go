// Package storelayout names the paths distribution's storage keeps an
// upstream's content at: blobs, repositories and their manifest, tag and
// layer links. The cache reads and writes there beside distribution, and
// garbage collection walks and deletes there, so both must agree with
// distribution, and with each other, on every path; this package is that
// agreement, written once.
//
// Paths are driver paths (slash-separated, rooted at "/"), as a storage
// driver takes them on a filesystem and on a bucket alike. OnDisk turns
// one into the file the filesystem driver keeps under its root.
package storelayout

import (
	"path"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// root is distribution's own prefix under the driver's root; everything
// else there (a GC marker, a lock) is outside what distribution walks.
const root = "/docker/registry/v2"

// RepositoriesRoot holds one directory per repository, nested by the
// repository name's components.
const RepositoriesRoot = root + "/repositories"

// The directories a repository's directory holds, by job.
const (
	// ManifestsDir holds revision and tag links. distribution creates it
	// with a repository's first manifest, and its catalog lists exactly
	// the repositories that have one.
	ManifestsDir = "_manifests"
	// LayersDir holds the links of the blobs the repository may serve.
	LayersDir = "_layers"
	// UploadsDir holds uploads in progress.
	UploadsDir = "_uploads"
)

// BlobData is where a blob's bytes are kept.
func BlobData(d digest.Digest) string {
	return path.Join(root, "blobs", d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
}

// Repository is a repository's directory.
func Repository(repo string) string {
	return path.Join(RepositoriesRoot, repo)
}

// Manifests is a repository's _manifests directory.
func Manifests(repo string) string {
	return path.Join(Repository(repo), ManifestsDir)
}

// RevisionLink is a repository's link to a manifest it holds. Its mtime on
// the filesystem is when the manifest was last pulled (see cache.used).
func RevisionLink(repo string, d digest.Digest) string {
	return path.Join(Manifests(repo), "revisions", d.Algorithm().String(), d.Encoded(), "link")
}

// TagCurrent is the directory of a tag's link to the manifest it points at.
func TagCurrent(repo, tag string) string {
	return path.Join(Manifests(repo), "tags", tag, "current")
}

// TagIndexEntry is the directory of a tag's record that it pointed at d.
func TagIndexEntry(repo, tag string, d digest.Digest) string {
	return path.Join(Manifests(repo), "tags", tag, "index", d.Algorithm().String(), d.Encoded())
}

// OnDisk is the file the filesystem driver rooted at dir keeps driver
// path p in.
func OnDisk(dir, p string) string {
	return filepath.Join(dir, filepath.FromSlash(p))
}
