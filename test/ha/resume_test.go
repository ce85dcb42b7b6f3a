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
	ranges, sent := recordRanges(up, layer, ts.HoldBody(size/2, release))
	c := startCluster(t, up, 2, options{leaseTTL: "2s"})

	killed, survived := make(chan error, 1), make(chan error, 1)
	go func() { _, err := getBlob(c.replicas[0], "team/big", layer); killed <- err }()
	holder := c.waitLease(t, layer)
	owner, other := c.replicas[0], c.replicas[1]
	if holder != owner.peer {
		t.Fatalf("lease held by %q, want replica 0's %q", holder, owner.peer)
	}
	// The survivor's client reads through its own replica's fill, which
	// streams the holder's. Its client cannot get the whole held half
	// before the holder's fill ends (the last stretch is sent once more
	// arrives or the fill ends), so waiting for all of it would wait out
	// the holder's upstream timeout, and its fill would end before the
	// kill. Once the client has the half less 1 MiB, the survivor's fill
	// has at least that much, and the kill tests a resume from there,
	// not a race with the stream or a holder that gave up on its own.
	var got atomic.Int64
	go func() { survived <- getBlobCounting(other, "team/big", layer, &got) }()
	ts.WaitUntil(t, 2500*time.Millisecond, "replica 1's client has the held half less 1 MiB, before the holder's upstream timeout", func() (bool, string) {
		return got.Load() >= size/2-1<<20, fmt.Sprint(got.Load())
	})
	owner.child.Kill(t)
	close(release)
	<-killed // the killed replica's client: cut, as expected
	if err := <-survived; err != nil {
		t.Fatalf("the surviving replica's client saw the holder's death: %v", err)
	}

	rs := ranges()
	t.Logf("upstream blob GETs: ranges %q, %d bytes sent for a %d-byte blob", rs, sent.Load(), size)
	resumed := false
	for _, r := range rs[min(1, len(rs)):] {
		if strings.HasPrefix(r, "bytes=") && strings.HasSuffix(r, "-") && r != "bytes=0-" {
			resumed = true
		}
	}
	if len(rs) < 2 || !resumed {
		t.Errorf("the takeover asked the upstream for %q, want a Range: bytes=N- from its offset", rs)
	}
	if got := sent.Load(); float64(got) > 1.1*size {
		t.Errorf("the upstream sent %d bytes for a %d-byte blob (%.2f×), want ≤ 1.1×", got, size, float64(got)/size)
	}
	if wrong, err := getBlob(other, "team/big", layer); err != nil || wrong {
		t.Errorf("pull after the takeover: %v", err)
	}
	c.checkBucket(t)
}

// recordRanges has the upstream answer the first GET of blob d through
// first, and records every GET's Range header and the bytes sent.
func recordRanges(up *ts.Upstream, d string, first ts.Action) (ranges func() []string, sent *atomic.Int64) {
	sent = &atomic.Int64{}
	var mu sync.Mutex
	var rs []string
	var done atomic.Bool
	up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + d,
		Action: func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			mu.Lock()
			rs = append(rs, r.Header.Get("Range"))
			mu.Unlock()
			cw := countingWriter{w, sent}
			if done.CompareAndSwap(false, true) {
				first(cw, r, next)
				return
			}
			next.ServeHTTP(cw, r)
		}})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), rs...)
	}, sent
}

// TestStalledPeerStreamMovesOn freezes (SIGSTOP) the lease holder while
// another replica streams its fill, which the upstream sends slowly: the holder's
// connections stay open and its lease in Redis outlives the test, but it
// sends nothing. The streaming replica gives up on it after the upstream
// timeout and fetches the rest alone, from its offset, and its client gets
// the whole blob without waiting for the holder.
func TestStalledPeerStreamMovesOn(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 8 << 20
	img := up.Push(t, "team/app:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	ranges, sent := recordRanges(up, layer, ts.Throttle(2<<20))
	c := startCluster(t, up, 2, options{leaseTTL: "5m"})
	holder, other := c.replicas[0], c.replicas[1]

	go func() { _, _ = getBlob(holder, "team/app", layer) }()
	if h := c.waitLease(t, layer); h != holder.peer {
		t.Fatalf("lease held by %q, want replica 0's %q", h, holder.peer)
	}
	var got atomic.Int64
	result := make(chan error, 1)
	start := time.Now()
	go func() { result <- getBlobCounting(other, "team/app", layer, &got) }()
	ts.WaitUntil(t, 20*time.Second, "replica 1's client has part of the blob", func() (bool, string) {
		return got.Load() >= 1<<20, fmt.Sprint(got.Load())
	})
	holder.child.Freeze(t)
	var err error
	select {
	case err = <-result:
	case <-time.After(60 * time.Second):
		t.Fatal("the client of a replica streaming a frozen holder hangs")
	}
	took := time.Since(start)
	if err != nil {
		t.Fatalf("client of a replica streaming a frozen holder: %v", err)
	}
	rs := ranges()
	t.Logf("whole verified blob after %v; upstream GETs with ranges %q, %d bytes sent for %d", took, rs, sent.Load(), size)
	if len(rs) != 2 || !strings.HasPrefix(rs[1], "bytes=") || rs[1] == "bytes=0-" {
		t.Errorf("upstream GETs had ranges %q, want the holder's and one from the streaming replica's offset", rs)
	}
	if n := other.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 1 {
		t.Errorf("replica 1 filled %v times alone, want 1 (past the frozen holder, whose lease lives on)", n)
	}
	// Only catches a hang: the peer's idle timeout, then the upstream.
	if limit := 2*upstreamTimeout + 2*time.Second; took > limit {
		t.Errorf("the client took %v past a frozen holder, want under %v", took, limit)
	}
}

// The peer port answers a replica resuming a fill with the bytes from its
// offset (206, Content-Range), from the running fill itself.
func TestPeerPortAnswersRangesOfARunningFill(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 4 << 20
	img := up.Push(t, "team/app:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	whole, err := http.Get(up.URL + "/v2/team/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(whole.Body)
	whole.Body.Close()
	if err != nil {
		t.Fatalf("blob from the upstream: %v", err)
	}
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	recordRanges(up, layer, ts.HoldBody(int64(len(all)/2), release))
	c := startCluster(t, up, 1, options{})
	go func() { _, _ = getBlob(c.replicas[0], "team/app", layer) }()
	c.waitLease(t, layer)
	ts.WaitFor(t, 20*time.Second, "the fill runs", func() bool {
		return c.replicas[0].metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "upstream"}) >= 1
	})

	const from = 1_000_000
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.replicas[0].peer+"/peer/v1/"+upstreamName+"/blobs/"+layer, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("ranged peer request: %s, want 206", resp.Status)
	}
	if want := fmt.Sprintf("bytes %d-%d/%d", from, len(all)-1, len(all)); resp.Header.Get("Content-Range") != want {
		t.Errorf("Content-Range %q, want %q", resp.Header.Get("Content-Range"), want)
	}
	once.Do(func() { close(release) })
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("ranged peer body: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(all[from:]) {
		t.Errorf("the ranged peer body (%d bytes) is not the blob from byte %d on", len(got), from)
	}
}

// getBlobCounting GETs blob d of repo through r, counting the bytes in got
// as they arrive, and checks the whole body against d.
func getBlobCounting(r *replica, repo, d string, got *atomic.Int64) error {
	resp, err := http.Get("http://" + r.listen + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(h, progress{got}), resp.Body); err != nil {
		return err
	}
	if "sha256:"+hex.EncodeToString(h.Sum(nil)) != d {
		return fmt.Errorf("wrong bytes")
	}
	return nil
}
