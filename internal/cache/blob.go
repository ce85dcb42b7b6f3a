package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

const copyBuffer = 256 << 10

// PrepareBlob makes a blob servable from the repository's local store if it
// can be without the upstream (already there, or stored for another
// repository and now linked here). It reports whether it is local.
func (c *Cache) PrepareBlob(ctx context.Context, name string, d digest.Digest) (bool, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return false, err
	}
	return c.linkLocal(ctx, repo, d)
}

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
		return false, fmt.Errorf("link blob %s: %w", d, err)
	}
	return false, errors.New("link blob: store did not mount")
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

// OpenBlob returns a stream of a blob being fetched from the upstream, joining
// the fill already running for it if there is one. It returns once the
// upstream has answered with headers (bounded by the upstream timeout), or
// with local=true if the blob became local meanwhile.
func (c *Cache) OpenBlob(ctx context.Context, name string, d digest.Digest) (s *Stream, local bool, err error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	f, joined := c.fills[d]
	if joined && f.failed() != nil {
		// A failed fill lingers until its goroutine unpublishes it; joining
		// it would hand this client the old failure.
		joined = false
	}
	if !joined {
		// Re-check under the lock: a fill may have committed since our caller
		// looked, and a second upstream GET would be wasted.
		if ok, _ := c.linkLocal(ctx, repo, d); ok {
			c.mu.Unlock()
			c.obs.Hit(KindBlob)
			return nil, true, nil
		}
		f, err = c.startFill(repo, name, d)
		if err != nil {
			c.mu.Unlock()
			return nil, false, err
		}
		c.obs.Miss(KindBlob)
	} else {
		c.obs.DedupJoin(KindBlob)
	}
	s, err = f.open(ctx)
	c.mu.Unlock()
	if err != nil {
		return nil, false, err
	}
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
	if joined {
		// The joined fill may be for another repository; link it here too
		// once it lands, so this repository's manifests find it. Cheap, and
		// only when the fill succeeded.
		go func() {
			<-f.finished
			if f.failed() == nil {
				_, _ = c.linkLocal(context.Background(), repo, d)
			}
		}()
	}
	return s, false, nil
}

// BlobSize answers a HEAD for a blob that is not local: from the fill running
// for it if there is one, else from one upstream HEAD. It never downloads.
func (c *Cache) BlobSize(ctx context.Context, name string, d digest.Digest) (int64, error) {
	if _, err := c.repo(ctx, name); err != nil {
		return 0, err
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
	return c.up.HeadBlob(ctx, name, d)
}

// fill is one upstream download of a blob, shared by every client asking for
// it meanwhile. Bytes land in a spool file that readers follow.
type fill struct {
	digest digest.Digest
	path   string // the spool file, or the stored blob once moved (under Cache.mu)
	moved  bool   // under Cache.mu
	w      *os.File

	ready     chan struct{} // closed once headers arrived or the fill failed early
	headerErr error
	size      int64 // from Content-Length, -1 if unknown

	finished chan struct{}

	mu      sync.Mutex
	cond    *sync.Cond
	written int64
	done    bool  // all bytes written and verified
	err     error // the fill failed
}

// startFill must be called with c.mu held.
func (c *Cache) startFill(repo distribution.Repository, name string, d digest.Digest) (*fill, error) {
	w, err := os.CreateTemp(c.spoolDir, "fill-*")
	if err != nil {
		return nil, fmt.Errorf("create spool file: %w", err)
	}
	f := &fill{digest: d, path: w.Name(), w: w, ready: make(chan struct{}), finished: make(chan struct{}), size: -1}
	f.cond = sync.NewCond(&f.mu)
	c.fills[d] = f
	go c.runFill(f, repo, name)
	return f, nil
}

func (c *Cache) runFill(f *fill, repo distribution.Repository, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.fillTimeout)
	defer cancel()
	defer close(f.finished)
	defer c.endFill(f)

	resp, err := c.up.GetBlob(ctx, name, f.digest)
	if err != nil {
		f.headerErr = err
		close(f.ready)
		f.fail(err)
		return
	}
	defer resp.Body.Close()
	f.size = resp.ContentLength
	close(f.ready)

	// Each byte is written once, to the spool that every reader follows,
	// and hashed once. Only verified, synced bytes are renamed into the
	// store, so a process killed mid-fill leaves a spool file (cleared at
	// the next start), never a servable blob.
	digester := f.digest.Algorithm().Digester()
	buf := make([]byte, copyBuffer)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if _, err := f.w.Write(chunk); err != nil {
				f.fail(fmt.Errorf("write spool: %w", err))
				return
			}
			_, _ = digester.Hash().Write(chunk)
			c.obs.UpstreamBytes(int64(n))
			f.advance(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.fail(rerr)
			return
		}
	}
	written := f.bytes()
	if f.size >= 0 && written != f.size {
		f.fail(&upstream.Error{Op: "read blob", Cause: upstream.CauseBadContent, Err: fmt.Errorf("short body: %d of %d bytes", written, f.size)})
		return
	}
	if got := digester.Digest(); got != f.digest {
		c.log.Error("upstream sent wrong bytes", "digest", f.digest, "got", got)
		f.fail(&upstream.Error{Op: "read blob", Cause: upstream.CauseBadContent, Err: fmt.Errorf("digest mismatch: want %s, got %s", f.digest, got)})
		return
	}
	// Storing is best effort: if it fails (disk full), the clients still
	// get their verified bytes; only caching is skipped.
	if err := c.commit(ctx, f, repo); err != nil {
		c.log.Warn("cache commit failed", "digest", f.digest, "err", err)
	}
	f.complete()
}

// commit moves a verified fill into the store and links it to repo.
func (c *Cache) commit(ctx context.Context, f *fill, repo distribution.Repository) error {
	if err := f.w.Sync(); err != nil {
		return fmt.Errorf("sync spool: %w", err)
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
	f.w.Close()
	if !moved {
		os.Remove(f.path)
	}
}

func (f *fill) advance(n int64) {
	f.mu.Lock()
	f.written += n
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *fill) bytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written
}

func (f *fill) fail(err error) {
	f.mu.Lock()
	if f.err == nil && !f.done {
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

func (f *fill) complete() {
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	f.cond.Broadcast()
}

// open must be called with the cache lock held, before endFill can unlink.
func (f *fill) open(ctx context.Context) (*Stream, error) {
	r, err := os.Open(f.path)
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	s := &Stream{f: f, r: r, ctx: ctx}
	s.stop = context.AfterFunc(ctx, func() {
		// Under the lock, so a reader between its ctx check and Wait
		// cannot miss the wake-up.
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	return s, nil
}

// Stream reads a blob while its fill runs.
type Stream struct {
	f    *fill
	r    *os.File
	ctx  context.Context
	stop func() bool
	off  int64
}

// Size is the blob's length as the upstream announced it, or -1.
func (s *Stream) Size() int64 { return s.f.size }

// Digest is the blob's digest.
func (s *Stream) Digest() digest.Digest { return s.f.digest }

// Read blocks until bytes are available. The final byte is released only
// after the whole blob has been verified, so a reader of a bad fill always
// ends with an error, never with a complete-looking body.
func (s *Stream) Read(p []byte) (int, error) {
	f := s.f
	f.mu.Lock()
	var avail int64
	for {
		if f.err != nil {
			err := f.err
			f.mu.Unlock()
			return 0, err
		}
		if err := s.ctx.Err(); err != nil {
			f.mu.Unlock()
			return 0, err
		}
		avail = f.written
		if !f.done {
			avail--
		}
		if s.off < avail {
			break
		}
		if f.done {
			f.mu.Unlock()
			return 0, io.EOF
		}
		f.cond.Wait()
	}
	f.mu.Unlock()
	if int64(len(p)) > avail-s.off {
		p = p[:avail-s.off]
	}
	n, err := s.r.ReadAt(p, s.off)
	s.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Close releases the reader; the fill goes on for the others and the cache.
func (s *Stream) Close() error {
	s.stop()
	return s.r.Close()
}
