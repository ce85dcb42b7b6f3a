package ha

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// countingWriter counts the body bytes an upstream sends.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// progress counts the bytes a client has read.
type progress struct{ n *atomic.Int64 }

func (p progress) Write(b []byte) (int, error) { p.n.Add(int64(len(b))); return len(b), nil }

func (c countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// TestKilledHolderResumesFromTheOffset kills -9 the replica fetching a
// blob halfway, while another streams its fill: the replica that takes
// the lease over asks the upstream for the rest only (Range: bytes=N-),
// keeps the bytes it has, and the cluster fetches little more than the
// blob once.
func TestKilledHolderResumesFromTheOffset(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 16 << 20
	img := up.Push(t, "team/big:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	release := make(chan struct{})
	var sent atomic.Int64
	var mu sync.Mutex
	var ranges []string
	var first atomic.Bool
	up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer,
		Action: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
			cw := countingWriter{w, &sent}
			if first.CompareAndSwap(false, true) {
				ts.HoldBody(size/2, release)(cw, r, next)
				return
			}
			next.ServeHTTP(cw, r)
		}})
	c := startCluster(t, up, 2, options{leaseTTL: "2s"})

	results := make(chan error, 2)
	go func() { _, err := getBlob(c.replicas[0], "team/big", layer); results <- err }()
	holder := c.waitLease(t, layer)
	owner, other := c.replicas[0], c.replicas[1]
	if holder != owner.peer {
		t.Fatalf("lease held by %q, want replica 0's %q", holder, owner.peer)
	}
	// The survivor's client reads through its own replica's fill, which
	// streams the holder's: once it has the held half (less the last byte,
	// kept until verified), so has the survivor's fill, and the kill
	// tests a resume from there, not a race with the stream.
	var got atomic.Int64
	go func() {
		resp, err := http.Get("http://" + other.listen + "/v2/team/big/blobs/" + layer)
		if err != nil {
			results <- err
			return
		}
		defer resp.Body.Close()
		h := sha256.New()
		_, err = io.Copy(io.MultiWriter(h, progress{&got}), resp.Body)
		if err == nil && "sha256:"+hex.EncodeToString(h.Sum(nil)) != layer {
			err = fmt.Errorf("wrong bytes")
		}
		results <- err
	}()
	ts.WaitUntil(t, 20*time.Second, "replica 1's client has the held half", func() (bool, string) {
		return got.Load() >= size/2-1, fmt.Sprint(got.Load())
	})
	owner.child.Kill(t)
	close(release)
	<-results // the killed replica's client: cut, as expected
	if err := <-results; err != nil {
		t.Fatalf("the surviving replica's client saw the holder's death: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	t.Logf("upstream blob GETs: ranges %q, %d bytes sent for a %d-byte blob", ranges, sent.Load(), size)
	resumed := false
	for _, r := range ranges[1:] {
		if strings.HasPrefix(r, "bytes=") && strings.HasSuffix(r, "-") && r != "bytes=0-" {
			resumed = true
		}
	}
	if len(ranges) < 2 || !resumed {
		t.Errorf("the takeover asked the upstream for %q, want a Range: bytes=N- from its offset", ranges)
	}
	if got := sent.Load(); float64(got) > 1.1*size {
		t.Errorf("the upstream sent %d bytes for a %d-byte blob (%.2f×), want ≤ 1.1×", got, size, float64(got)/size)
	}
	if wrong, err := getBlob(other, "team/big", layer); err != nil || wrong {
		t.Errorf("pull after the takeover: %v", err)
	}
	c.checkBucket(t)
}
