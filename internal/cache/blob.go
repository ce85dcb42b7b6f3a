package cache

// The public side of blobs: a client's GET and HEAD, answered from the
// store or from the fill running for the blob (fill.go).

import (
	"context"
	"errors"
	"os"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// BlobReader is what a client's blob request is served from: the stored
// file, which the kernel can send (sendfile) with ranges, or a stream of the
// fill running for it, shared with every other client asking meanwhile.
// Exactly one of File and Stream is set; Close releases it.
type BlobReader struct {
	File   *os.File
	Stream *Stream
}

// Close releases the reader.
func (b *BlobReader) Close() error {
	if b.File != nil {
		return b.File.Close()
	}
	return b.Stream.Close()
}

// Blob answers a client's GET of a blob: from the store if it is there (or
// stored for another repository, then linked here if this one holds a
// manifest), else from the upstream through a fill shared with every other
// client asking meanwhile. It returns once the upstream has answered with
// headers, bounded by the upstream timeout.
func (c *Cache) Blob(ctx context.Context, name string, d digest.Digest) (*BlobReader, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	// The store is looked at once, outside the cache's lock. A fill that
	// landed between that look and the lock (landed moved on) sends the
	// request to look once more, rather than start a second download; the
	// second time it fetches whatever happens meanwhile.
	for recheck := true; ; recheck = false {
		landed := c.landed.Load()
		if f, ok := c.localFile(ctx, repo, d); ok {
			c.obs.Hit(KindBlob)
			return &BlobReader{File: f}, nil
		}
		st, err := c.openFill(ctx, repo, name, d, landed, recheck)
		if errors.Is(err, errLanded) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return &BlobReader{Stream: st}, nil
	}
}

// errLanded is openFill's answer when a fill landed since the caller
// looked at the store: the blob it wants may be one of them.
var errLanded = errors.New("a fill landed since the store was looked at")

// localFile opens d's bytes on this host if they are here: the stored
// file, or on a shared bucket the local copy, which is served without
// asking the bucket. Either way the bytes are verified and named by
// digest, and the kernel can send them.
func (c *Cache) localFile(ctx context.Context, repo distribution.Repository, d digest.Digest) (*os.File, bool) {
	if c.shared != nil {
		c.guard.Use(d)
	} else if ok, _ := c.linkLocal(ctx, repo, d); !ok {
		return nil, false
	}
	return c.openHere(d)
}

// openHere opens d's bytes on this host without looking further: the
// stored file, or the local copy on a shared bucket.
func (c *Cache) openHere(d digest.Digest) (*os.File, bool) {
	if c.shared != nil {
		return c.shared.tier.open(d)
	}
	f, err := c.openLocal(d)
	return f, err == nil
}

// openFill returns a stream of a blob being fetched from the upstream,
// joining the fill already running for it if there is one. With recheck,
// it returns errLanded instead of starting a fill if a fill landed since
// the caller read landed (Cache.landed) and looked at the store: the blob
// may be stored now. It does no storage I/O under the cache's lock,
// which every request and the metrics scrape take.
func (c *Cache) openFill(ctx context.Context, repo distribution.Repository, name string, d digest.Digest, landed uint64, recheck bool) (s *Stream, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, &upstream.Error{Op: "get blob", Cause: upstream.CauseUnreachable, Err: errors.New("upstream removed")}
	}
	f, joined := c.fills[d]
	if joined && !f.joinable() {
		// A failed fill lingers until its goroutine unpublishes it, and a
		// pass-through fill keeps only its last few MiB: neither can give
		// this client its first byte.
		joined = false
	}
	linkHere := false
	if !joined {
		if recheck && c.landed.Load() != landed {
			// A fill may have committed this blob since our caller
			// looked, and a second upstream GET would be wasted.
			c.mu.Unlock()
			return nil, errLanded
		}
		f = c.startFill(repo, name, d)
		c.obs.Miss(KindBlob)
	} else {
		c.obs.DedupJoin(KindBlob)
		// The joined fill may be for another repository: it links the
		// blob here too when it commits, so this repository's manifests
		// find it; if it has committed already, this request does.
		if c.shared == nil && name != f.name {
			if f.moved {
				linkHere = true
			} else {
				f.alsoLink[name] = repo
			}
		}
	}
	s = f.attach(ctx)
	c.mu.Unlock()
	if linkHere {
		_, _ = c.linkLocal(ctx, repo, d)
	}
	if err := s.awaitHeader(); err != nil {
		return nil, err
	}
	return s, nil
}

// FillsInFlight is the number of blob downloads running now, including
// those whose clients are served and whose bytes are being committed.
func (c *Cache) FillsInFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.fills)
}

// BlobSize answers a HEAD of a blob: from the store if it is there, else
// from the fill running for it, else from one upstream HEAD. It never
// downloads.
func (c *Cache) BlobSize(ctx context.Context, name string, d digest.Digest) (int64, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return 0, err
	}
	if c.shared != nil {
		if n, ok := c.shared.tier.stat(d); ok {
			c.obs.Hit(KindBlob)
			return n, nil
		}
		sctx, cancel := c.bucketCall(ctx)
		desc, err := c.registry.BlobStatter().Stat(sctx, d)
		cancel()
		if err == nil {
			c.obs.Hit(KindBlob)
			return desc.Size, nil
		}
	} else if ok, _ := c.linkLocal(ctx, repo, d); ok {
		if fi, err := os.Stat(c.blobPath(d)); err == nil {
			c.obs.Hit(KindBlob)
			return fi.Size(), nil
		}
	}
	c.mu.Lock()
	f := c.fills[d]
	c.mu.Unlock()
	if f != nil && f.failed() == nil {
		select {
		case <-f.ready:
			if f.headerErr == nil && f.size >= 0 {
				return f.size, nil
			}
		default:
		}
	}
	n, err := c.client().HeadBlob(ctx, name, d)
	c.upstreamFailed(KindBlob, err)
	return n, err
}
