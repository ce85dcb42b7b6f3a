package cache

// The fill: one download of a blob shared by every client asking for it
// meanwhile, from spool or pass-through to verified and committed.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// passWindow is how far a pass-through fill may run ahead of its slowest
// client: the bytes it keeps in memory instead of on disk.
const passWindow = 4 << 20

// errAbandoned ends a pass-through fill whose clients all left: with
// nowhere to store the bytes, nobody would ever read them.
var errAbandoned = errors.New("every client of an uncached fill left")

// fill is one upstream download of a blob, shared by every client asking for
// it meanwhile. In the normal mode the bytes land in a spool file that
// readers follow and that is renamed into the store once verified. When the
// blob cannot be stored (no space even after eviction, or the store cannot
// be written) the fill passes through: the bytes stay in a window in memory
// that the upstream read is paced to, and nothing is written.
//
// A fill of unknown size starts spooling and claims space step by step
// (fillStep). When a step cannot be had, it switches to pass-through for
// the rest, at passAt, the number of bytes spooled so far: those stay in
// the spool file, which readers keep reading up to passAt, and every later
// byte goes through the window. Nothing more is written, so the free space
// stays above the watermark; the spool is never committed (its digest
// covers bytes that were never written to it) and is removed when the fill
// ends, its space coming back once the last reader closes it. The window's
// pacing counts a reader still in the spool as being at passAt: it needs
// every windowed byte from there on. A client joining after the switch can
// still get every byte as long as the window holds passAt, so it reads the
// spool, then the window, like the others.
type fill struct {
	digest digest.Digest

	// Set before ready is closed, under Cache.mu.
	name  string // the repository it was started for
	path  string // the spool file, or the stored blob once moved (under Cache.mu)
	moved bool   // under Cache.mu
	// alsoLink are the other repositories whose clients joined, to link
	// the blob into once it is stored; under Cache.mu, until moved.
	alsoLink  map[string]distribution.Repository
	w         *os.File
	pass      bool
	headerErr error
	size      int64 // from Content-Length, -1 if unknown

	ready chan struct{} // closed once the mode is set or the fill failed early

	mu       sync.Mutex
	cond     *sync.Cond
	written  int64
	verified bool // all bytes written and their digest checked
	err      error
	streams  map[*Stream]struct{}
	ring     []byte // pass-through window, nil while spooling: byte at offset o >= passAt is ring[o%len(ring)]
	passAt   int64  // where the window starts: 0, or the bytes spooled before a switch
}

// startFill must be called with c.mu held.
func (c *Cache) startFill(repo distribution.Repository, name string, d digest.Digest) *fill {
	f := &fill{digest: d, name: name, ready: make(chan struct{}), size: -1,
		streams: map[*Stream]struct{}{}, alsoLink: map[string]distribution.Repository{}}
	f.cond = sync.NewCond(&f.mu)
	c.fills[d] = f
	c.fillWG.Add(1)
	go func() {
		defer c.fillWG.Done()
		c.runFill(f, repo, name)
	}()
	return f
}

func (c *Cache) runFill(f *fill, repo distribution.Repository, name string) {
	ctx, cancel := context.WithTimeout(c.ctx, c.tunables().fillTimeout)
	defer cancel()
	defer c.endFill(f)
	// Until the mode is known, ready is open: any exit before it is an
	// early failure every waiter must hear about.
	early := func(err error) {
		f.headerErr = err
		f.fail(err)
		close(f.ready)
	}

	av := &avoid{}
	src, err := c.openSource(ctx, name, f.digest, av)
	if err != nil {
		early(err)
		return
	}
	// Before endFill (defers run last first): a lease is released only
	// after the commit, so a replica waiting on it finds the blob stored.
	// A resumed fill replaces src, so the close reads it at the end.
	defer func() { src.Close() }()
	fromUpstream := src.kind == SourceUpstream
	// A blob read from the bucket is there already: a fill that resumes
	// elsewhere after the bucket stalled stores only its local copy.
	inBucket := src.kind == SourceBucket
	c.obs.FillSource(src.kind)
	c.log.Debug("fill", "repository", name, "digest", f.digest, "source", src.kind, "size", src.size)
	size := src.size

	res, reason := c.reserve(ctx, size)
	defer res.Release()
	var w *os.File
	if reason == "" {
		w, err = c.createSpool()
		if err != nil {
			c.storageFailed(OpSpool, err)
			reason = UncachedStorageError
		}
	}
	if reason != "" {
		c.obs.FillUncached(reason)
		c.log.Warn("blob passes through uncached", "repository", name, "digest", f.digest, "size", size, "reason", reason)
	}
	c.mu.Lock()
	f.size = size
	if w != nil {
		f.w, f.path = w, w.Name()
	} else {
		f.pass = true
		f.ring = make([]byte, passWindow)
	}
	// Streams that attached before the mode was known get their reader
	// now, under the lock joiners take: no joiner falls between.
	f.openStreams()
	close(f.ready)
	c.mu.Unlock()

	digester := f.digest.Algorithm().Digester()
	buf := make([]byte, copyBuffer)
	var read int64 // from the sources, resumed ones included
	passing := f.pass
	for {
		n, rerr := src.body.Read(buf)
		read += int64(n)
		if size >= 0 && read > size {
			// More bytes than the blob has (a source, or a resume, that
			// went wrong): written, they would let clients read the
			// blob's last byte before the digest check.
			f.fail(&upstream.Error{Op: "read blob", Cause: upstream.CauseBadContent, Err: fmt.Errorf("long body: over %d bytes", size)})
			return
		}
		if n > 0 {
			chunk := buf[:n]
			if !passing && size < 0 && res != nil && res.Left() < int64(n) {
				if !c.reserveMore(ctx, res, f.bytes(), max(fillStep, int64(n))) {
					// No more room: the rest passes through. The bytes
					// spooled so far no longer count as reserved: they are
					// on disk, and nothing more will be.
					res.Release()
					f.switchToPass()
					passing = true
					c.obs.FillUncached(UncachedNoSpace)
					c.log.Warn("blob of unknown size passes through uncached from here", "repository", name, "digest", f.digest,
						"spooled", f.bytes(), "reason", UncachedNoSpace)
				}
			}
			if passing {
				if err := f.put(ctx, chunk); err != nil {
					f.fail(err)
					return
				}
			} else {
				if _, err := f.w.Write(chunk); err != nil {
					// The client's bytes are lost with the spool: it gets an
					// error and its retry passes through or finds space.
					c.storageFailed(OpSpool, fmt.Errorf("write spool: %w", err))
					f.fail(&upstream.Error{Op: "store blob", Cause: CauseStorage, Err: errStorage})
					return
				}
				f.advance(int64(n))
			}
			res.Consumed(int64(n))
			_, _ = digester.Hash().Write(chunk)
			if fromUpstream {
				c.obs.UpstreamBytes(int64(n))
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if next := c.resume(ctx, src, name, f.digest, read, rerr, av); next != nil {
				src.Close()
				src = next
				fromUpstream = src.kind == SourceUpstream
				continue
			}
			f.fail(rerr)
			return
		}
	}
	written := f.bytes()
	if size >= 0 && written != size {
		f.fail(&upstream.Error{Op: "read blob", Cause: upstream.CauseBadContent, Err: fmt.Errorf("short body: %d of %d bytes", written, size)})
		return
	}
	if got := digester.Digest(); got != f.digest {
		c.log.Error("wrong bytes for a blob", "source", src.kind, "digest", f.digest, "got", got)
		if src.kind == SourceUpstream {
			c.badContent(KindBlob)
		}
		f.fail(&upstream.Error{Op: "read blob", Cause: upstream.CauseBadContent, Err: fmt.Errorf("digest mismatch: want %s, got %s", f.digest, got)})
		return
	}
	// Every byte is verified: the clients get their last byte now, not
	// after the fsync and rename. A crash before those loses a cache
	// entry, never correctness: only verified bytes are ever renamed into
	// the store, and only the rename makes them servable from it.
	f.verify()
	if passing {
		return
	}
	kind := src.kind
	if inBucket {
		kind = SourceBucket
	}
	if err := c.commit(ctx, f, repo, kind); err != nil {
		c.storageFailed(OpCommit, err)
		return
	}
	c.storageWorked()
}

// CauseStorage is the cause of a fill that failed because the store could
// not be written mid-stream; the client's retry is then served uncached.
const CauseStorage upstream.Cause = "storage"

// errStorage is what a client of such a fill is told: no paths, no errno.
var errStorage = errors.New("the cache could not store the blob; retry")

// createSpool makes the spool file of a fill, recreating the directories if
// the store's were removed underneath us (a replaced disk, a remount).
func (c *Cache) createSpool() (*os.File, error) {
	w, err := os.CreateTemp(c.spoolDir, "fill-*")
	if err == nil {
		return w, nil
	}
	if mkErr := os.MkdirAll(c.spoolDir, 0o750); mkErr != nil {
		return nil, fmt.Errorf("create spool file: %w", err)
	}
	w, err = os.CreateTemp(c.spoolDir, "fill-*")
	if err != nil {
		return nil, fmt.Errorf("create spool file: %w", err)
	}
	c.log.Warn("recreated the storage directory", "dir", c.spoolDir)
	c.storeRecreated()
	return w, nil
}

// commit syncs a verified fill, moves it into the store and links it to
// repo if repo holds a manifest; on a shared bucket, see commitShared. kind
// is where it came from.
func (c *Cache) commit(ctx context.Context, f *fill, repo distribution.Repository, kind string) error {
	if err := f.w.Sync(); err != nil {
		return fmt.Errorf("sync spool: %w", err)
	}
	if c.shared != nil {
		return c.commitShared(ctx, f, repo, kind)
	}
	release := c.guard.Hold()
	defer release()
	c.guard.Use(f.digest)
	stored := c.blobPath(f.digest)
	err := os.MkdirAll(filepath.Dir(stored), 0o750)
	if err == nil {
		err = os.Rename(f.path, stored)
	}
	if err != nil {
		return fmt.Errorf("store blob: %w", err)
	}
	also := c.landedAt(f, stored)
	if ok, err := c.linkLocal(ctx, repo, f.digest); err != nil || !ok {
		return fmt.Errorf("link blob: %v", err)
	}
	for _, r := range also {
		if _, err := c.linkLocal(ctx, r, f.digest); err != nil {
			c.log.Debug("link joined blob", "repository", r.Named().Name(), "digest", f.digest, "err", err)
		}
	}
	return nil
}

// landedAt records that f's bytes are stored at path now, and returns the
// repositories of joined clients to link them into. The move is done
// before, outside the cache's lock: a client joining between the move and
// this reads the moved file through the fill's descriptor (Stream.open),
// and readers already open keep reading the same inode. Joiners from now
// on open the stored file, and link it themselves (openFill).
func (c *Cache) landedAt(f *fill, path string) []distribution.Repository {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.path, f.moved = path, true
	also := make([]distribution.Repository, 0, len(f.alsoLink))
	for _, r := range f.alsoLink {
		also = append(also, r)
	}
	f.alsoLink = nil
	c.landed.Add(1)
	return also
}

// endFill unpublishes a fill. Readers keep their own descriptors, so the spool
// file can be unlinked at once.
func (c *Cache) endFill(f *fill) {
	c.mu.Lock()
	if c.fills[f.digest] == f {
		delete(c.fills, f.digest)
	}
	moved := f.moved
	c.mu.Unlock()
	if f.w != nil {
		f.w.Close()
		if !moved {
			os.Remove(f.path)
		}
	}
}

// joinable reports whether a new client can still get every byte of f:
// the window, if any, must still hold its first byte.
func (f *fill) joinable() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false
	}
	return f.ring == nil || f.written-f.passAt <= int64(len(f.ring))
}

// switchToPass makes every byte from now on go through the window; see
// fill for how readers of the spool get there.
func (f *fill) switchToPass() {
	f.mu.Lock()
	f.passAt = f.written
	f.ring = make([]byte, passWindow)
	f.mu.Unlock()
}

func (f *fill) advance(n int64) {
	f.mu.Lock()
	f.written += n
	f.mu.Unlock()
	f.cond.Broadcast()
}

// put appends chunk to a pass-through window once the slowest client has
// read far enough to make room for it.
func (f *fill) put(ctx context.Context, chunk []byte) error {
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	w := int64(len(f.ring))
	for {
		if len(f.streams) == 0 {
			return errAbandoned
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		slowest := f.written
		for s := range f.streams {
			slowest = min(slowest, s.off)
		}
		// A reader still in the spool needs the window from its start.
		slowest = max(slowest, f.passAt)
		if f.written+int64(len(chunk))-slowest <= w {
			break
		}
		f.cond.Wait()
	}
	for len(chunk) > 0 {
		at := f.written % w
		n := copy(f.ring[at:], chunk)
		chunk = chunk[n:]
		f.written += int64(n)
	}
	f.cond.Broadcast()
	return nil
}

func (f *fill) bytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *fill) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.verified {
		f.err = err
	}
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *fill) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fill) verify() {
	f.mu.Lock()
	f.verified = true
	f.mu.Unlock()
	f.cond.Broadcast()
}
