package cache

import (
	"os"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// accessGranularity limits how often one manifest's last-pull time is
// rewritten: eviction needs recency in hours, not a syscall per request.
const accessGranularity = time.Minute

// RevisionLinkPath is where the filesystem driver keeps a repository's link
// to a manifest. Its mtime records the manifest's last pull, which is what
// eviction ranks by: persistent across restarts, and no extra state to keep.
func RevisionLinkPath(root, repo string, d digest.Digest) string {
	return storelayout.OnDisk(root, storelayout.RevisionLink(repo, d))
}

// used records a pull of a manifest: it claims it from a running collection
// and refreshes its last-pull time.
func (c *Cache) used(repo string, d digest.Digest) {
	c.guard.Use(d)
	key := repo + "@" + d.String()
	now := time.Now()
	c.accessMu.Lock()
	last, ok := c.accessed[key]
	if ok && now.Sub(last) < accessGranularity {
		c.accessMu.Unlock()
		return
	}
	if len(c.accessed) > 100_000 {
		c.accessed = map[string]time.Time{} // bound memory; worst case one extra Chtimes each
	}
	c.accessed[key] = now
	c.accessMu.Unlock()
	if c.record != nil {
		c.record(repo, d, now)
	}
	if c.shared != nil {
		return // no revision links on this disk
	}
	if err := os.Chtimes(RevisionLinkPath(c.root, repo, d), now, now); err != nil && !os.IsNotExist(err) {
		c.log.Debug("record pull time", "repository", repo, "digest", d, "err", err)
	}
}

// openLocal opens a committed blob's bytes for reading, or fails if the store
// does not hold them. Serving the file directly lets the kernel send it
// (sendfile), where distribution's ServeBlob copies through user space.
func (c *Cache) openLocal(d digest.Digest) (*os.File, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return os.Open(c.blobPath(d))
}

// blobPath is where the filesystem driver keeps a blob's bytes.
func (c *Cache) blobPath(d digest.Digest) string {
	return storelayout.OnDisk(c.root, storelayout.BlobData(d))
}
