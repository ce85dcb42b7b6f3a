package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/storelayout"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

const copyBuffer = 256 << 10

// passWindow is how far a pass-through fill may run ahead of its slowest
// client: the bytes it keeps in memory instead of on disk.
const passWindow = 4 << 20

// fillStep is how much space a fill of unknown size (no Content-Length)
// claims at a time, ahead of the bytes it writes: large enough that a
// statfs per step costs nothing next to the bytes, small enough that
// concurrent chunked fills do not refuse each other space they will never
// use.
const fillStep = 8 << 20

// errAbandoned ends a pass-through fill whose clients all left: with
// nowhere to store the bytes, nobody would ever read them.
var errAbandoned = errors.New("every client of an uncached fill left")

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
	// A collection may remove a blob between the check and the open; it
	// is then fetched again, once.
	for range 2 {
		if f, ok := c.localFile(ctx, repo, d); ok {
			c.obs.Hit(KindBlob)
			return &BlobReader{File: f}, nil
		}
		st, local, err := c.openFill(ctx, repo, name, d)
		if err != nil {
			return nil, err
		}
		if !local {
			return &BlobReader{Stream: st}, nil
		}
		// openFill found it here under its lock, linked: just open it.
		if f, ok := c.openHere(d); ok {
			c.obs.Hit(KindBlob)
			return &BlobReader{File: f}, nil
		}
	}
	return nil, &upstream.Error{Op: "get blob", Cause: upstream.CauseUnreachable, Err: errors.New("blob removed while being served; retry")}
}

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

// hasLocal is localFile without the open.
func (c *Cache) hasLocal(ctx context.Context, repo distribution.Repository, d digest.Digest) bool {
	if c.shared != nil {
		_, ok := c.shared.tier.stat(d)
		return ok
	}
	ok, _ := c.linkLocal(ctx, repo, d)
	return ok
}

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
	desc, err := c.ns.BlobStatter().Stat(ctx, d)
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

// openFill returns a stream of a blob being fetched from the upstream,
// joining the fill already running for it if there is one, or local=true if
// the blob became local meanwhile.
func (c *Cache) openFill(ctx context.Context, repo distribution.Repository, name string, d digest.Digest) (s *Stream, local bool, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, false, &upstream.Error{Op: "get blob", Cause: upstream.CauseUnreachable, Err: errors.New("upstream removed")}
	}
	f, joined := c.fills[d]
	if joined && !f.joinable() {
		// A failed fill lingers until its goroutine unpublishes it, and a
		// pass-through fill keeps only its last few MiB: neither can give
		// this client its first byte.
		joined = false
	}
	if !joined {
		// Re-check under the lock: a fill may have committed since our caller
		// looked, and a second upstream GET would be wasted.
		if c.hasLocal(ctx, repo, d) {
			c.mu.Unlock()
			return nil, true, nil
		}
		f = c.startFill(repo, name, d)
		c.obs.Miss(KindBlob)
	} else {
		c.obs.DedupJoin(KindBlob)
	}
	s = f.attach(ctx)
	c.mu.Unlock()
	select {
	case <-f.ready:
	case <-ctx.Done():
		s.Close()
		return nil, false, ctx.Err()
	}
	if f.headerErr != nil {
		s.Close()
		return nil, false, f.headerErr
	}
	if joined && c.shared == nil {
		// The joined fill may be for another repository; link it here too
		// once it lands, so this repository's manifests find it. Cheap, and
		// only when the fill succeeded.
		go func() {
			<-f.finished
			if f.stored() {
				_, _ = c.linkLocal(context.Background(), repo, d)
			}
		}()
	}
	return s, false, nil
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
		desc, err := c.ns.BlobStatter().Stat(sctx, d)
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
	path      string // the spool file, or the stored blob once moved (under Cache.mu)
	moved     bool   // under Cache.mu
	w         *os.File
	pass      bool
	headerErr error
	size      int64 // from Content-Length, -1 if unknown

	ready    chan struct{} // closed once the mode is set or the fill failed early
	finished chan struct{}

	mu       sync.Mutex
	cond     *sync.Cond
	written  int64
	verified bool // all bytes written and their digest checked
	ok       bool // verified and committed to the store
	err      error
	streams  map[*Stream]struct{}
	ring     []byte // pass-through window, nil while spooling: byte at offset o >= passAt is ring[o%len(ring)]
	passAt   int64  // where the window starts: 0, or the bytes spooled before a switch
}

// startFill must be called with c.mu held.
func (c *Cache) startFill(repo distribution.Repository, name string, d digest.Digest) *fill {
	f := &fill{digest: d, ready: make(chan struct{}), finished: make(chan struct{}), size: -1,
		streams: map[*Stream]struct{}{}}
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
	ctx, cancel := context.WithTimeout(c.ctx, c.opts().fillTimeout)
	defer cancel()
	defer close(f.finished)
	defer c.endFill(f)
	// Until the mode is known, ready is open: any exit before it is an
	// early failure every waiter must hear about.
	early := func(err error) {
		f.headerErr = err
		f.fail(err)
		close(f.ready)
	}

	src, err := c.openSource(ctx, name, f.digest)
	if err != nil {
		early(err)
		return
	}
	// Before endFill (defers run last first): a lease is released only
	// after the commit, so a replica waiting on it finds the blob stored.
	// A resumed fill replaces src, so the close reads it at the end.
	defer func() { src.Close() }()
	fromUpstream := src.kind == SourceUpstream
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
			if next := c.resume(ctx, src, name, f.digest, read, rerr); next != nil {
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
	if err := c.commit(ctx, f, repo, src.kind); err != nil {
		c.storageFailed(OpCommit, err)
		return
	}
	c.storageWorked()
	f.commit()
}

// CauseStorage is the cause of a fill that failed because the store could
// not be written mid-stream; the client's retry is then served uncached.
const CauseStorage upstream.Cause = "storage"

// errStorage is what a client of such a fill is told: no paths, no errno.
var errStorage = errors.New("the cache could not store the blob; retry")

// reserve claims space for a fill of size bytes, or for its first step
// (fillStep) if its size is unknown; see reserveMore for the next ones. It
// returns a reason (UncachedNoSpace) when the blob must pass through: it
// does not fit above the watermark even after evicting. Eviction is bounded
// by the upstream timeout; if it takes longer it goes on in the background
// and this one fill passes through.
func (c *Cache) reserve(ctx context.Context, size int64) (*disk.Reservation, string) {
	if c.space == nil {
		return nil, ""
	}
	o := c.opts()
	need := size
	if size < 0 {
		need = fillStep
	}
	res, ok, err := c.space.Reserve(need, o.minFree)
	if err != nil {
		// statfs fails when the store's directory is gone; creating the
		// spool will tell whether storing works at all.
		c.log.Warn("disk space unknown", "err", err)
		return nil, ""
	}
	if ok {
		return res, ""
	}
	// A blob bigger than the whole filesystem allows would have every
	// image evicted for nothing: it passes through and evicts nothing.
	if fits, err := c.space.Fits(need, o.minFree); err == nil && !fits {
		return nil, UncachedNoSpace
	}
	if c.makeRoom != nil {
		c.evictFor(ctx, need)
		if res, ok, err := c.space.Reserve(need, o.minFree); err == nil && ok {
			return res, ""
		}
	}
	return nil, UncachedNoSpace
}

// reserveMore claims the next step of a fill of unknown size that has
// written bytes so far, evicting for it as reserve does. It reports false
// when the step cannot be had, and the fill must pass through from here.
func (c *Cache) reserveMore(ctx context.Context, res *disk.Reservation, written, step int64) bool {
	o := c.opts()
	ok, err := res.Extend(step, o.minFree)
	if err != nil {
		// As in reserve: with the usage unknown, writing the spool will
		// tell whether storing works at all.
		c.log.Warn("disk space unknown", "err", err)
		return true
	}
	if ok {
		return true
	}
	// The bytes written are the blob's too: if it cannot fit with them,
	// evicting everything else would not make it fit.
	if fits, err := c.space.Fits(written+step, o.minFree); err == nil && !fits {
		return false
	}
	if c.makeRoom == nil {
		return false
	}
	c.evictFor(ctx, step)
	ok, err = res.Extend(step, o.minFree)
	return err == nil && ok
}

// evictFor frees space until need bytes fit above the watermark, waiting
// at most the upstream timeout: longer, it goes on in the background.
func (c *Cache) evictFor(ctx context.Context, need int64) {
	short, err := c.space.Shortfall(need, c.opts().minFree)
	if err != nil || short <= 0 {
		return
	}
	done := make(chan error, 1)
	// Eviction may outlast this fill's wait; it belongs to the
	// cache like the fill (Close cancels and waits for it).
	c.fillWG.Add(1)
	go func() {
		defer c.fillWG.Done()
		done <- c.makeRoom(c.ctx, short)
	}()
	t := time.NewTimer(c.client().Timeout())
	defer t.Stop()
	select {
	case err = <-done:
		if err != nil {
			c.log.Warn("evict for space", "need", short, "err", err)
		}
	case <-t.C:
	case <-ctx.Done():
	}
}

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
	c.mu.Lock()
	err := os.MkdirAll(filepath.Dir(c.blobPath(f.digest)), 0o750)
	if err == nil {
		err = os.Rename(f.path, c.blobPath(f.digest))
	}
	if err == nil {
		// Joiners from now on open the stored file; readers already open
		// keep reading the same inode.
		f.path, f.moved = c.blobPath(f.digest), true
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("store blob: %w", err)
	}
	if ok, err := c.linkLocal(ctx, repo, f.digest); err != nil || !ok {
		return fmt.Errorf("link blob: %v", err)
	}
	return nil
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

func (f *fill) stored() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ok
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

func (f *fill) commit() {
	f.mu.Lock()
	f.ok = true
	f.mu.Unlock()
}

// attach registers a client of f. Must be called with the cache lock held:
// once the mode is known it opens the client's reader at once, before
// endFill can unlink the spool.
func (f *fill) attach(ctx context.Context) *Stream {
	s := &Stream{f: f, ctx: ctx}
	s.stop = context.AfterFunc(ctx, func() {
		// Under the lock, so a reader between its ctx check and Wait
		// cannot miss the wake-up.
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	f.mu.Lock()
	f.streams[s] = struct{}{}
	f.mu.Unlock()
	select {
	case <-f.ready:
		s.open()
	default:
	}
	return s
}

// openStreams opens the readers of streams that attached before the mode
// was known. Called with the cache lock held.
func (f *fill) openStreams() {
	f.mu.Lock()
	pending := make([]*Stream, 0, len(f.streams))
	for s := range f.streams {
		pending = append(pending, s)
	}
	f.mu.Unlock()
	for _, s := range pending {
		s.open()
	}
}

// Stream reads a blob while its fill runs.
type Stream struct {
	f    *fill
	r    *os.File // spool reader; nil in pass-through mode
	rerr error    // why the spool could not be opened
	ctx  context.Context
	stop func() bool
	off  int64 // under f.mu
	once sync.Once
}

// open gets a spool reader; the path is read under the cache lock. When the
// path is gone (the store's directory was removed under a running fill) the
// reader is opened through the fill's own descriptor: the bytes are still
// there, and a joiner must get them rather than an error. It is a new open
// of the file, so its offset is its own, not the writer's.
func (s *Stream) open() {
	if s.f.pass || s.f.w == nil || s.r != nil {
		return
	}
	s.r, s.rerr = os.Open(s.f.path)
	if s.rerr != nil && !s.f.moved {
		if r, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", s.f.w.Fd())); err == nil {
			s.r, s.rerr = r, nil
		}
	}
}

// StartAt makes a stream that has read nothing start at blob offset off,
// for a replica resuming a fill that has the bytes before it. It reports
// false, and the stream starts at 0, once the stream has read, or when
// the fill passes bytes through a window, which may no longer hold off.
func (s *Stream) StartAt(off int64) bool {
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.off != 0 || f.pass || f.ring != nil {
		return false
	}
	s.off = off
	return true
}

// Size is the blob's length as the upstream announced it, or -1.
func (s *Stream) Size() int64 { return s.f.size }

// Whole is, once the stream has been read to its verified end, the spool
// file with every byte of the blob, for a range to be answered from as the
// stored file would answer it; nil when the fill passed any byte through
// (those are gone) or is not verified.
func (s *Stream) Whole() *os.File {
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.verified || f.err != nil || f.ring != nil || s.r == nil {
		return nil
	}
	return s.r
}

// Read blocks until bytes are available. The final byte is released only
// after the whole blob has been verified, so a reader of a bad fill always
// ends with an error, never with a complete-looking body.
func (s *Stream) Read(p []byte) (int, error) {
	avail, err := s.wait()
	if err != nil {
		return 0, err
	}
	f := s.f
	f.mu.Lock()
	if int64(len(p)) > avail-s.off {
		p = p[:avail-s.off]
	}
	if f.ring != nil && s.off >= f.passAt {
		// Under the lock: the writer fills the ring's other slots meanwhile.
		w := int64(len(f.ring))
		if s.off < f.written-w {
			// Cannot happen: the fill waits for its slowest reader.
			f.mu.Unlock()
			return 0, errors.New("pass-through reader fell behind its window")
		}
		n := 0
		for n < len(p) {
			at := (s.off + int64(n)) % w
			n += copy(p[n:], f.ring[at:min(w, at+int64(len(p)-n))])
		}
		s.off += int64(n)
		f.mu.Unlock()
		f.cond.Broadcast() // room for the writer
		return n, nil
	}
	if f.ring != nil {
		// The fill switched to pass-through: the spool ends at passAt.
		p = p[:min(int64(len(p)), f.passAt-s.off)]
	}
	off := s.off
	f.mu.Unlock()
	if s.r == nil {
		if s.rerr != nil {
			return 0, fmt.Errorf("open spool: %w", s.rerr)
		}
		return 0, errors.New("spool not open")
	}
	n, err := s.r.ReadAt(p, off)
	f.mu.Lock()
	s.off += int64(n)
	f.mu.Unlock()
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// WriteTo sends the rest of the stream to w as bytes become available, the
// last one only once verified, like Read. From a spool file into a writer
// that can take a file (an HTTP response on a TCP connection) the bytes go
// by sendfile: the kernel copies them from the page cache the fill just
// wrote to the socket, without passing through user space once per client.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	rf, ok := w.(io.ReaderFrom)
	if s.f.pass || s.r == nil || !ok {
		buf := make([]byte, copyBuffer)
		return io.CopyBuffer(writerOnly{w}, readerOnly{s}, buf)
	}
	var total int64
	for {
		avail, err := s.wait()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		off, end := s.spooled(avail)
		if off >= end {
			// The fill switched to pass-through and this reader has all
			// the spool holds: the rest comes through the window.
			n, err := io.CopyBuffer(writerOnly{w}, readerOnly{s}, make([]byte, copyBuffer))
			return total + n, err
		}
		if _, err := s.r.Seek(off, io.SeekStart); err != nil {
			return total, err
		}
		n, err := rf.ReadFrom(&io.LimitedReader{R: s.r, N: end - off})
		total += n
		s.f.mu.Lock()
		s.off += n
		s.f.mu.Unlock()
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrUnexpectedEOF
		}
	}
}

// wait blocks until the stream has bytes past its offset, and returns how
// far it may read: all that is written, less the last byte until verified.
// It returns io.EOF at the verified end, and the fill's error if it failed.
func (s *Stream) wait() (int64, error) {
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.err != nil {
			return 0, f.err
		}
		if err := s.ctx.Err(); err != nil {
			return 0, err
		}
		avail := f.written
		if !f.verified {
			avail--
		}
		if s.off < avail {
			return avail, nil
		}
		if f.verified {
			return 0, io.EOF
		}
		f.cond.Wait()
	}
}

// spooled returns the stream's offset and how far the spool file may be
// read from it: up to avail, or to where a switched fill's window starts.
func (s *Stream) spooled(avail int64) (off, end int64) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.ring != nil {
		avail = min(avail, s.f.passAt)
	}
	return s.off, avail
}

// writerOnly and readerOnly hide ReadFrom and WriteTo, so io.CopyBuffer
// uses its buffer instead of calling back into WriteTo.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// Close releases the reader; the fill goes on for the others and the cache.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		s.stop()
		f := s.f
		f.mu.Lock()
		delete(f.streams, s)
		f.mu.Unlock()
		f.cond.Broadcast()
		if s.r != nil {
			err = s.r.Close()
		}
	})
	return err
}
