package gc_test

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"

	"github.com/multiproxy/multiproxy/internal/gc"
)

// BenchmarkCollect2000Blobs measures one online collection of a store of
// 2,000 blobs across 200 repositories while 8 clients keep pulling, and the
// process's peak heap and RSS growth during it. A fifth of the images are
// unused for two days, so the run evicts and sweeps as well as marks.
//
//	go test -run '^$' -bench Collect2000 -benchtime 3x ./internal/gc/
func BenchmarkCollect2000Blobs(b *testing.B) {
	f := newFixture(b)
	// 200 images of 9 layers plus a config: 2,000 blobs (and 200 manifests).
	images := f.push(b, 200, 9, 2<<10)
	c := &http.Client{Timeout: 30 * time.Second}
	for _, im := range images {
		if err := ts.PullVerified(c, f.base, im.repo, im.digest); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// Restore what the previous run evicted, then age a fifth again.
		for _, im := range images {
			if err := ts.PullVerified(c, f.base, im.repo, im.digest); err != nil {
				b.Fatal(err)
			}
		}
		for _, im := range images[:40] {
			f.backdate(b, im, time.Now().Add(-48*time.Hour))
		}
		runtime.GC()
		rssBefore := rssKiB()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for j := w; ; j++ {
					select {
					case <-stop:
						return
					default:
					}
					im := images[40+j%160]
					_ = ts.PullVerified(c, f.base, im.repo, im.digest)
				}
			})
		}
		var peakHeap uint64
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			var ms runtime.MemStats
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				runtime.ReadMemStats(&ms)
				peakHeap = max(peakHeap, ms.HeapInuse)
			}
		}()
		b.StartTimer()
		res, err := gc.Collect(context.Background(), f.store, gc.Policy{MaxUnused: 24 * time.Hour}, false, nil)
		b.StopTimer()
		close(stop)
		wg.Wait()
		<-sampled
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(peakHeap)/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(rssKiB()-rssBefore)/1024, "rss-growth-MiB")
		b.ReportMetric(float64(len(res.Evicted)), "evicted")
		b.ReportMetric(float64(res.FreedBlobs), "freed-blobs")
		b.StartTimer()
	}
}

// rssKiB is the process's resident set size.
func rssKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}
