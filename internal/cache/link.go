package cache

// Links: a blob stored for one repository made visible in another by a
// link, never by a second download.

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// linkLocal reports whether d's bytes are in the store, linking them into
// repo if repo holds a manifest. A repository exists only once a manifest
// is stored in it: a blob asked for under any other name is served by
// digest and writes nothing, or any client could create repositories
// without limit (directories here, objects in a bucket) by naming them.
func (c *Cache) linkLocal(ctx context.Context, repo distribution.Repository, d digest.Digest) (bool, error) {
	// Claim the blob before looking: a collection sweeping now must not
	// delete it between our Stat and the client's read.
	c.guard.Use(d)
	blobs := repo.Blobs(ctx)
	if _, err := blobs.Stat(ctx, d); err == nil {
		return true, nil
	}
	desc, err := c.registry.BlobStatter().Stat(ctx, d)
	if err != nil {
		return false, nil
	}
	// Asked only when a link would be written: a repository's own links,
	// the common case of a pull, cost nothing more.
	if !c.holdsManifest(ctx, repo) {
		return true, nil
	}
	// The bytes are already stored for another repository: link them here
	// instead of downloading them again.
	canon, err := reference.WithDigest(repo.Named(), d)
	if err != nil {
		return false, err
	}
	_, err = blobs.Create(ctx, mountWithStat{from: canon, stat: desc})
	var mounted distribution.ErrBlobMounted
	if errors.As(err, &mounted) {
		return true, nil
	}
	if err != nil {
		// The link could not be written (a full or read-only disk), but
		// the bytes are there: serve them, since they are served by digest.
		c.storageFailed(OpCommit, fmt.Errorf("link blob %s: %w", d, err))
		return true, nil
	}
	return false, errors.New("link blob: store did not mount")
}

// holdsManifest reports whether a manifest was stored in repo: one Stat of
// its _manifests directory through the driver (on a bucket, a HEAD or a
// one-key list), never a walk. distribution creates that directory with a
// repository's first manifest, and its catalog lists exactly the
// repositories that have that directory.
func (c *Cache) holdsManifest(ctx context.Context, repo distribution.Repository) bool {
	_, err := c.driver.Stat(ctx, storelayout.Manifests(repo.Named().Name()))
	return err == nil
}

type mountWithStat struct {
	from reference.Canonical
	stat v1.Descriptor
}

func (m mountWithStat) Apply(v any) error {
	opts, ok := v.(*distribution.CreateOptions)
	if !ok {
		return fmt.Errorf("unexpected create options %T", v)
	}
	opts.Mount.ShouldMount = true
	opts.Mount.From = m.from
	opts.Mount.Stat = &m.stat
	return nil
}
