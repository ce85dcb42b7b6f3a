package cache

// A client's stream of a running fill: reads that follow the writer, the
// last byte held back until verified, and sendfile from the spool.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

const copyBuffer = 256 << 10

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

// awaitHeader waits until s's fill knows its source answered (or that it
// did not) and returns the fill's header error or s's context's; on
// either s is closed, its client gone.
func (s *Stream) awaitHeader() error {
	select {
	case <-s.f.ready:
	case <-s.ctx.Done():
		s.Close()
		return s.ctx.Err()
	}
	if err := s.f.headerErr; err != nil {
		s.Close()
		return err
	}
	return nil
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
