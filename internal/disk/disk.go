// Package disk keeps the cache from filling the filesystem it stores on.
//
// A fill that announces its size (Content-Length) reserves that many bytes
// before it writes one; one that does not reserves in steps (Extend) ahead
// of the bytes it writes, and passes the rest through unstored when a step
// is refused. A reservation is granted only while the filesystem's free
// space, less every reservation still outstanding, stays above the low
// watermark (min_free). When it would not, the caller frees
// space first (evicting least recently pulled images) and asks again; if the
// blob still does not fit, it is streamed to the clients without being
// stored. So the disk never fills because of the cache, and a full disk
// never fails a pull.
//
// Upstreams whose storage shares a filesystem share one Space, so their
// reservations add up against the same free bytes.
package disk

import (
	"fmt"
	"sync"
	"syscall"
)

// DefaultMinFree is the watermark without a setting: 5% of the filesystem or
// 1 GiB, whichever is smaller, so a small volume is not left mostly unused
// and a large one keeps a useful margin.
func DefaultMinFree(total int64) int64 { return min(total/20, 1<<30) }

// MinFree is a low watermark: a fraction of the filesystem, or bytes.
type MinFree struct {
	Percent float64 // 0 < Percent < 100, or 0 when Bytes is set
	Bytes   int64
}

// For returns the watermark in bytes on a filesystem of total bytes.
func (m MinFree) For(total int64) int64 {
	switch {
	case m.Percent > 0:
		return int64(float64(total) * m.Percent / 100)
	case m.Bytes > 0:
		return m.Bytes
	}
	return DefaultMinFree(total)
}

// Usage is a filesystem's size and free space as statfs reports it to an
// unprivileged writer.
type Usage struct {
	Total int64
	Free  int64
}

// Statfs reads the usage of the filesystem holding path.
func Statfs(path string) (Usage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(st.Bsize)
	return Usage{Total: int64(st.Blocks) * bs, Free: int64(st.Bavail) * bs}, nil
}

// Device identifies the filesystem holding path, so that upstreams on one
// filesystem can share a Space.
func Device(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint64(st.Dev), nil
}

// Space accounts for the bytes fills are about to write on one filesystem.
type Space struct {
	path  string // any directory on the filesystem
	usage func(string) (Usage, error)

	mu       sync.Mutex
	reserved int64
}

// New accounts for the filesystem holding path.
func New(path string) *Space { return &Space{path: path, usage: Statfs} }

// NewWith is New with another source of usage figures, for tests of code
// that must react to a full disk without filling one.
func NewWith(path string, usage func(string) (Usage, error)) *Space {
	return &Space{path: path, usage: usage}
}

// Usage is the filesystem's usage now.
func (s *Space) Usage() (Usage, error) { return s.usage(s.path) }

// Reserved is the sum of reservations not yet released.
func (s *Space) Reserved() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved
}

// Shortfall is how many bytes must be freed before n bytes fit above the
// watermark m, counting reservations already granted; 0 if they fit now.
func (s *Space) Shortfall(n int64, m MinFree) (int64, error) {
	// statfs under the lock: a fill that writes and gives back its
	// reservation between our statfs and our look at the reservations
	// would have its bytes counted as free twice.
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.usage(s.path)
	if err != nil {
		return 0, err
	}
	return max(0, n+m.For(u.Total)-(u.Free-s.reserved)), nil
}

// Fits reports whether n bytes could ever fit above the watermark m, with
// everything else on the filesystem gone. A blob that cannot is passed
// through without evicting anything for it.
func (s *Space) Fits(n int64, m MinFree) (bool, error) {
	u, err := s.usage(s.path)
	if err != nil {
		return false, err
	}
	return n+m.For(u.Total) <= u.Total, nil
}

// Reserve claims n bytes if they fit above the watermark m. The returned
// Reservation must be released once the bytes are written (they then show
// in the free space) or abandoned.
func (s *Space) Reserve(n int64, m MinFree) (*Reservation, bool, error) {
	s.mu.Lock() // before statfs, as in Shortfall
	defer s.mu.Unlock()
	u, err := s.usage(s.path)
	if err != nil {
		return nil, false, err
	}
	if u.Free-s.reserved-n < m.For(u.Total) {
		return nil, false, nil
	}
	s.reserved += n
	return &Reservation{s: s, n: n}, true, nil
}

// Reservation is space claimed for one fill.
type Reservation struct {
	s        *Space
	once     sync.Once
	n        int64 // under s.mu
	released bool  // under s.mu
}

// Extend claims n more bytes for the same fill if they still fit above the
// watermark m. A fill whose size is unknown (no Content-Length) reserves
// in steps as its bytes arrive, so it is held to the watermark like one
// that announced its size. A released reservation never grows again.
func (r *Reservation) Extend(n int64, m MinFree) (bool, error) {
	s := r.s
	s.mu.Lock() // before statfs, as in Shortfall
	defer s.mu.Unlock()
	if r.released {
		return false, nil
	}
	u, err := s.usage(s.path)
	if err != nil {
		return false, err
	}
	if u.Free-s.reserved-n < m.For(u.Total) {
		return false, nil
	}
	s.reserved += n
	r.n += n
	return true, nil
}

// Left is how many claimed bytes have not been written yet.
func (r *Reservation) Left() int64 {
	if r == nil {
		return 0
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return r.n
}

// Consumed gives back n bytes that have been written: they now show in the
// filesystem's free space and must not be counted twice.
func (r *Reservation) Consumed(n int64) {
	if r == nil {
		return
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	n = min(n, r.n)
	r.n -= n
	r.s.reserved -= n
}

// Release returns the reservation; safe to call more than once.
func (r *Reservation) Release() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		r.s.mu.Lock()
		r.s.reserved -= r.n
		r.n = 0
		r.released = true
		r.s.mu.Unlock()
	})
}
