package ha

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// bucketFaults puts testsupport's fault rules between replica 0 and the
// bucket (versitygw): a bucket that stalls or hangs for that replica
// only. Rules match the S3 request's path, which ends in the object key.
func bucketFaults(t *testing.T) (*ts.Faults, func(i int, gateway string) string) {
	f := ts.NewFaults()
	return f, func(i int, gateway string) string {
		if i != 0 {
			return gateway
		}
		target, err := url.Parse(gateway)
		if err != nil {
			t.Fatal(err)
		}
		// The Host header stays the one the driver signed (SigV4).
		proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		}}
		srv := httptest.NewServer(f.Wrap(proxy))
		t.Cleanup(func() {
			f.Reset()
			srv.Close()
		})
		return srv.URL
	}
}

// blobObject is the path in the S3 API (and the Faults' request log) of
// blob d's bytes, minus the bucket.
func blobObject(d string) string { return "/" + blobKey(d) }

// storeThroughReplica1 has blob d of repo filled through replica 1, and
// waits until the bucket holds it and the fill's lease is gone: replica 0
// has no copy of its own and will read d from the bucket.
func (c *cluster) storeThroughReplica1(t *testing.T, repo, d string) {
	t.Helper()
	if wrong, err := getBlob(c.replicas[1], repo, d); err != nil || wrong {
		t.Fatalf("fill through replica 1: %v", err)
	}
	c.waitNoLease(t, d)
	if _, err := os.Stat(filepath.Join(c.s3.Dir, filepath.FromSlash(blobKey(d)))); err != nil {
		t.Fatalf("blob filled through replica 1 is not in the bucket: %v", err)
	}
}

// waitNoLease waits until no replica holds d's fill lease: the fill that
// held it has committed.
func (c *cluster) waitNoLease(t *testing.T, d string) {
	t.Helper()
	key := "multiproxy:fill:" + upstreamName + ":" + d
	ts.WaitUntil(t, 30*time.Second, "the fill lease is released", func() (bool, string) {
		n, err := c.redis.Client().Exists(t.Context(), key).Result()
		return err == nil && n == 0, fmt.Sprint(n, err)
	})
}

// TestStalledBucketReadMovesOn: the bucket stops sending a blob halfway
// through a replica's read of it. The fill moves on to the next source
// (here the upstream, under the lease) after the idle timeout, asks it for
// the bytes from its offset only, and its client gets the whole verified
// blob, without the bucket being written the blob it holds already.
func TestStalledBucketReadMovesOn(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	const size = 8 << 20
	img := up.Push(t, "team/app:v1", 1, size)
	layer := ts.LayerDigests(t, img)[0]
	faults, endpoint := bucketFaults(t)
	c := startCluster(t, up, 2, options{leaseTTL: "5m", s3Endpoint: endpoint})
	c.storeThroughReplica1(t, "team/app", layer)

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	faults.Add(ts.Rule{Method: http.MethodGet, PathContains: blobObject(layer), Times: 1, Action: ts.HoldBody(size/2, release)})
	ranges, sent := recordRanges(up, layer, func(w http.ResponseWriter, r *http.Request, next http.Handler) { next.ServeHTTP(w, r) })
	faults.ResetCounts()

	start := time.Now()
	wrong, err := getBlob(c.replicas[0], "team/app", layer)
	took := time.Since(start)
	if err != nil || wrong {
		t.Fatalf("client of a fill whose bucket read stalled: %v", err)
	}
	rs := ranges()
	t.Logf("whole verified blob after %v (upstream timeout %v); upstream GETs with ranges %q, %d bytes sent for %d",
		took, upstreamTimeout, rs, sent.Load(), size)
	if n := faults.Count(http.MethodGet, blobObject(layer)); n != 1 {
		t.Errorf("replica 0 read the blob from the bucket %d times, want 1 (the stalled read)", n)
	}
	if len(rs) != 1 || !strings.HasPrefix(rs[0], "bytes=") || !strings.HasSuffix(rs[0], "-") || rs[0] == "bytes=0-" {
		t.Errorf("the upstream was asked for ranges %q, want one Range: bytes=N- from the fill's offset", rs)
	}
	if got := sent.Load(); got > size/2+size/10 {
		t.Errorf("the upstream sent %d bytes after the bucket stalled at %d of %d, want the rest only", got, size/2, size)
	}
	// Only catches a hang: the bucket's idle timeout, then the upstream.
	if limit := 2*upstreamTimeout + 2*time.Second; took > limit {
		t.Errorf("the client took %v past a stalled bucket, want under %v", took, limit)
	}
	// The blob is in the bucket: the fill stores its local copy only. It
	// commits after its client's last byte, under the lease it took.
	c.waitNoLease(t, layer)
	for _, m := range []string{http.MethodPut, http.MethodPost} {
		if n := faults.Count(m, blobObject(layer)); n != 0 {
			t.Errorf("replica 0 sent %d %s requests for the blob the bucket holds", n, m)
		}
	}
	if wrong, err := getBlob(c.replicas[0], "team/app", layer); err != nil || wrong {
		t.Errorf("pull after the resumed fill: %v", err)
	}
	c.checkBucket(t)
}

// TestHungBucketCallsAreBounded: the bucket takes a HEAD (the blob's
// Stat) or a GET and never answers. The fill gets the blob elsewhere after
// one bucket call's timeout (the upstream timeout), not the fill's
// 30 minutes, and asks the hung bucket once.
func TestHungBucketCallsAreBounded(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 2, 1<<20)
	layers := ts.LayerDigests(t, img)
	faults, endpoint := bucketFaults(t)
	c := startCluster(t, up, 2, options{leaseTTL: "5m", s3Endpoint: endpoint})
	for _, l := range layers {
		c.storeThroughReplica1(t, "team/app", l)
	}

	for i, method := range []string{http.MethodHead, http.MethodGet} {
		layer := layers[i]
		faults.Add(ts.Rule{Method: method, PathContains: blobObject(layer), Action: ts.BlackHole()})
		faults.ResetCounts()
		start := time.Now()
		wrong, err := getBlob(c.replicas[0], "team/app", layer)
		took := time.Since(start)
		if err != nil || wrong {
			t.Fatalf("bucket hanging its %s: %v", method, err)
		}
		hung := faults.Count(method, blobObject(layer))
		t.Logf("bucket hanging its %s: whole verified blob after %v (upstream timeout %v), %d hung calls",
			method, took, upstreamTimeout, hung)
		if hung != 1 {
			t.Errorf("bucket hanging its %s: asked %d times, want once", method, hung)
		}
		// One bucket call's timeout, then a 1 MiB upstream fetch: a
		// second wait for the hung bucket would reach 2× the timeout.
		if limit := 2 * upstreamTimeout; took > limit {
			t.Errorf("bucket hanging its %s: the client waited %v, want under %v", method, took, limit)
		}
	}
}
