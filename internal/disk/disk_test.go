package disk_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/multiproxy/multiproxy/internal/disk"
)

// fakeFS is a filesystem's usage as statfs would report it, changed by
// the test as a fill would change it by writing.
type fakeFS struct {
	total, free atomic.Int64
	// park, when it holds a channel, holds the next statfs after it has
	// read the figures, until that channel is closed: a reservation caught
	// between its statfs and its bookkeeping. parked says it got there.
	park   chan chan struct{}
	parked chan struct{}
}

func (f *fakeFS) usage(string) (disk.Usage, error) {
	u := disk.Usage{Total: f.total.Load(), Free: f.free.Load()}
	select {
	case release := <-f.park:
		close(f.parked)
		<-release
	default:
	}
	return u, nil
}

func TestReserveKeepsTheWatermark(t *testing.T) {
	fs := &fakeFS{park: make(chan chan struct{}, 1), parked: make(chan struct{})}
	fs.total.Store(1000)
	fs.free.Store(100)
	s := disk.NewWith("/", fs.usage)
	m := disk.MinFree{Bytes: 10}

	r1, ok, err := s.Reserve(50, m)
	if err != nil || !ok {
		t.Fatalf("first reservation of 50 with 100 free: %v %v", ok, err)
	}
	if _, ok, _ := s.Reserve(45, m); ok {
		t.Fatal("45 more granted: 100 free - 50 reserved - 45 leaves 5, under the watermark of 10")
	}

	// A second fill asks while the first writes its 50 bytes and gives
	// its reservation back: the 50 bytes must not count as free twice.
	release := make(chan struct{})
	fs.park <- release
	var granted atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		_, ok, _ := s.Reserve(45, m)
		granted.Store(ok)
	})
	<-fs.parked // it has read 100 free
	wg.Go(func() {
		fs.free.Store(50) // the first fill's bytes are on disk
		r1.Consumed(50)
	})
	close(release)
	wg.Wait()
	if granted.Load() {
		t.Errorf("45 granted with 50 free and a watermark of 10: the disk would go below it")
	}
	if got := s.Reserved(); got != 0 && !granted.Load() {
		t.Errorf("reserved %d after the first fill gave its bytes back, want 0", got)
	}
}

func TestShortfallAndFits(t *testing.T) {
	fs := &fakeFS{park: make(chan chan struct{}), parked: make(chan struct{})}
	fs.total.Store(1000)
	fs.free.Store(100)
	s := disk.NewWith("/", fs.usage)
	m := disk.MinFree{Percent: 5} // 50 bytes of 1000
	if n, _ := s.Shortfall(80, m); n != 30 {
		t.Errorf("shortfall of 80 with 100 free and 50 kept: %d, want 30", n)
	}
	if ok, _ := s.Fits(951, m); ok {
		t.Error("951 bytes fit on a 1000-byte disk keeping 50 free")
	}
	if ok, _ := s.Fits(900, m); !ok {
		t.Error("900 bytes do not fit on a 1000-byte disk keeping 50 free")
	}
	if got := disk.DefaultMinFree(1 << 40); got != 1<<30 {
		t.Errorf("default watermark on 1 TiB: %d, want 1 GiB", got)
	}
	if got := disk.DefaultMinFree(1 << 30); got != (1<<30)/20 {
		t.Errorf("default watermark on 1 GiB: %d, want 5%%", got)
	}
}

// A fill of unknown size grows its reservation step by step; each step
// counts against the watermark with every other reservation, and a
// released reservation claims nothing more.
func TestExtendKeepsTheWatermark(t *testing.T) {
	fs := &fakeFS{park: make(chan chan struct{}), parked: make(chan struct{})}
	fs.total.Store(1000)
	fs.free.Store(100)
	s := disk.NewWith("/", fs.usage)
	m := disk.MinFree{Bytes: 10}

	r, ok, err := s.Reserve(30, m)
	if err != nil || !ok {
		t.Fatalf("first step of 30 with 100 free: %v %v", ok, err)
	}
	other, ok, _ := s.Reserve(20, m)
	if !ok {
		t.Fatal("another fill's 20 refused with 70 left above the watermark")
	}
	if ok, err := r.Extend(30, m); err != nil || !ok {
		t.Fatalf("second step of 30 with 50 reserved of 100 free: %v %v", ok, err)
	}
	if r.Left() != 60 || s.Reserved() != 80 {
		t.Errorf("after two steps: %d left, %d reserved; want 60 and 80", r.Left(), s.Reserved())
	}
	if ok, _ := r.Extend(15, m); ok {
		t.Error("a step granted that leaves 5 free, under the watermark of 10")
	}
	fs.free.Store(40) // the fill wrote its 60 bytes
	r.Consumed(60)
	if ok, _ := r.Extend(10, m); !ok {
		t.Error("a step of 10 refused with 40 free, 20 reserved by the other fill and a watermark of 10")
	}
	r.Release()
	if ok, _ := r.Extend(1, m); ok || s.Reserved() != 20 {
		t.Errorf("a released reservation grew (%v) or kept bytes: %d reserved, want the other fill's 20", ok, s.Reserved())
	}
	other.Release()
}
