package cache

// Manifests by digest: looked up, fetched once for every client asking,
// verified and stored, or served from memory when the store cannot take
// them.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	// Manifest schemas register their unmarshalers in init.
	_ "github.com/distribution/distribution/v3/manifest/manifestlist"
	_ "github.com/distribution/distribution/v3/manifest/ocischema"
	_ "github.com/distribution/distribution/v3/manifest/schema2"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

func (c *Cache) hasManifest(ctx context.Context, repo distribution.Repository, d digest.Digest) bool {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return false
	}
	ok, err := ms.Exists(ctx, d)
	return err == nil && ok
}

// EnsureManifest makes the manifest with digest d present in the local store,
// fetching and verifying it on a miss. Concurrent misses share one GET.
//
// When the store cannot take the manifest it is returned, verified, to be
// served from memory; otherwise the returned Manifest is nil.
func (c *Cache) EnsureManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	c.guard.Use(d) // claim before looking (see ResolveTag)
	if c.hasManifest(ctx, repo, d) {
		c.obs.Hit(KindManifest)
		c.used(name, d)
		return nil, nil
	}
	_, mem, err := c.ensureManifest(ctx, repo, name, d)
	if err == nil && mem == nil {
		c.used(name, d)
	}
	return mem, err
}

func (c *Cache) ensureManifest(ctx context.Context, repo distribution.Repository, name string, d digest.Digest) (v1.Descriptor, *Manifest, error) {
	ch := c.manifests.DoChan(name+"@"+d.String(), func() (any, error) {
		// Detached from any one client: the others waiting share this
		// result. One more timeout for the wait on another replica.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*c.client().Timeout())
		defer cancel()
		if c.hasManifest(fctx, repo, d) {
			return c.describeManifest(fctx, repo, d)
		}
		c.obs.Miss(KindManifest)
		if c.shared != nil && c.shared.Coord != nil {
			stored, lease := c.leaseManifest(fctx, repo, d)
			if stored {
				return c.describeManifest(fctx, repo, d)
			}
			if lease != nil {
				defer lease.Release()
			}
		}
		body, info, err := c.client().GetManifest(fctx, name, d.String())
		if err != nil {
			c.upstreamFailed(KindManifest, err)
			return v1.Descriptor{}, err
		}
		c.obs.UpstreamBytes(int64(len(body)))
		desc, err := c.putManifest(fctx, repo, body, info)
		c.upstreamFailed(KindManifest, err)
		return desc, err
	})
	select {
	case <-ctx.Done():
		return v1.Descriptor{}, nil, ctx.Err()
	case r := <-ch:
		if r.Shared {
			c.obs.DedupJoin(KindManifest)
		}
		desc, _ := r.Val.(v1.Descriptor)
		var unstored *notStored
		if errors.As(r.Err, &unstored) {
			return desc, &Manifest{Body: unstored.body, MediaType: desc.MediaType}, nil
		}
		if r.Err != nil {
			return v1.Descriptor{}, nil, r.Err
		}
		return desc, nil, nil
	}
}

func (c *Cache) describeManifest(ctx context.Context, repo distribution.Repository, d digest.Digest) (v1.Descriptor, error) {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return v1.Descriptor{}, err
	}
	m, err := ms.Get(ctx, d)
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, payload, err := m.Payload()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(payload))}, nil
}

// putManifest stores verified manifest bytes exactly as the upstream sent
// them. Bytes distribution would refuse are the upstream's bad content,
// found before the write so that they never count as a store that cannot
// write.
func (c *Cache) putManifest(ctx context.Context, repo distribution.Repository, body []byte, info upstream.ManifestInfo) (v1.Descriptor, error) {
	m, desc, err := distribution.UnmarshalManifest(manifestMediaType(info.MediaType, body), body)
	if err != nil {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	if desc.Digest != info.Digest {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent,
			Err: fmt.Errorf("digest mismatch: want %s, got %s", info.Digest, desc.Digest)}
	}
	if err := checkManifest(body); err != nil {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	// Before the first write: a collection running now must spare the
	// manifest and everything it references.
	refs := []digest.Digest{desc.Digest}
	for _, r := range m.References() {
		refs = append(refs, r.Digest)
	}
	release := c.guard.Hold()
	defer release()
	c.guard.Use(refs...)
	ms, err := repo.Manifests(ctx, storage.SkipLayerVerification())
	if err != nil {
		return v1.Descriptor{}, err
	}
	c.ensureRoot()
	got, err := ms.Put(ctx, m)
	if err != nil && manifestRefused(err) {
		return v1.Descriptor{}, &upstream.Error{Op: "store manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	if err != nil {
		// The bytes are verified: a store that cannot take them (full,
		// read-only, gone) must not fail the pull. The caller serves them
		// from memory.
		c.storageFailed(OpManifest, fmt.Errorf("store manifest %s: %w", info.Digest, err))
		// distribution's filesystem driver leaves its temporary file
		// behind when the final write fails (a full disk): on a disk that
		// stays full every refused manifest would leave one more.
		c.removeTemps(filepath.Dir(c.blobPath(info.Digest)),
			filepath.Dir(RevisionLinkPath(c.root, repo.Named().Name(), info.Digest)))
		return desc, &notStored{body: body}
	}
	if got != info.Digest {
		return v1.Descriptor{}, fmt.Errorf("store manifest: stored as %s, want %s", got, info.Digest)
	}
	c.storageWorked()
	return desc, nil
}

// FetchManifest fetches and verifies manifest d from the upstream, stores it
// if the store takes it, and returns its bytes either way: for a client
// whose stored copy was lost between the cache's check and the read.
func (c *Cache) FetchManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	body, info, err := c.client().GetManifest(ctx, name, d.String())
	if err != nil {
		c.upstreamFailed(KindManifest, err)
		return nil, err
	}
	c.obs.UpstreamBytes(int64(len(body)))
	var unstored *notStored
	desc, err := c.putManifest(ctx, repo, body, info)
	if err != nil && !errors.As(err, &unstored) {
		c.upstreamFailed(KindManifest, err)
		return nil, err
	}
	c.used(name, d)
	// The media type the store serves it as, not the upstream's header:
	// one that is no manifest type was replaced by the manifest's own.
	return &Manifest{Body: body, MediaType: desc.MediaType}, nil
}

// StoredManifest reads manifest d of repository name from the store, with
// the media type the store serves it as. An error means the store does not
// have it (its revision link or blob is gone) or cannot read it; the
// caller decides whether to fetch it again.
func (c *Cache) StoredManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	m, err := ms.Get(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	mt, body, err := m.Payload()
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	return &Manifest{Body: body, MediaType: mt}, nil
}

// notStored carries a verified manifest the store could not take.
type notStored struct{ body []byte }

func (e *notStored) Error() string { return "manifest not stored" }

// Manifest is a verified manifest's bytes and media type: one the store
// could not take (a full or read-only disk), to be served from memory, or
// one read back from the store.
type Manifest struct {
	Body      []byte
	MediaType string
}
