package ha

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// getBlob GETs a blob through r and checks the bytes against d. An error
// is what a client sees: a status other than 200, a broken body, or bytes
// that do not match (which must never happen).
func getBlob(r *replica, repo, d string) (wrong bool, err error) {
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Get("http://" + r.listen + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return false, fmt.Errorf("replica %d: %s: %s", r.i, resp.Status, b)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return false, fmt.Errorf("replica %d: body cut after %d bytes: %w", r.i, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return false, fmt.Errorf("replica %d: %d of %d bytes", r.i, n, resp.ContentLength)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return true, fmt.Errorf("replica %d: complete body hashes to %s, want %s", r.i, got, d)
	}
	return false, nil
}

// TestKillLeaseHolderMidFill kills -9 the replica fetching a blob while
// the other two stream its running fill: another replica takes the lease
// over once it expires and finishes. The clients of the surviving replicas
// never see the break (their fills resume from the new source); the
// killed replica's own client gets a clean error, and its retry through
// another replica gets the right bytes.
func TestKillLeaseHolderMidFill(t *testing.T) {
	up := ts.Profiles()[0].Start(t) // plain: the held body is the registry's own
	img := up.Push(t, "team/big:v1", 1, 8<<20)
	layer := ts.LayerDigests(t, img)[0]
	release := make(chan struct{})
	up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer, Times: 1,
		Action: ts.HoldBody(1<<20, release)})
	c := startCluster(t, up, 3, options{leaseTTL: "2s"})

	type result struct {
		r     *replica
		wrong bool
		err   error
	}
	results := make(chan result, 8)
	var wg sync.WaitGroup
	pull := func(r *replica) {
		wg.Go(func() {
			wrong, err := getBlob(r, "team/big", layer)
			results <- result{r, wrong, err}
		})
	}
	pull(c.replicas[0])
	holder := c.waitLease(t, layer)
	var owner *replica
	var others []*replica
	for _, r := range c.replicas {
		if r.peer == holder {
			owner = r
		} else {
			others = append(others, r)
		}
	}
	if owner == nil {
		t.Fatalf("lease held by %q, which is no replica", holder)
	}
	for _, r := range others {
		pull(r)
		pull(r)
	}
	for _, r := range others {
		ts.WaitUntil(t, 20*time.Second, "replica streams the holder's fill", func() (bool, string) {
			v := r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "peer"})
			return v >= 1, fmt.Sprint(v)
		})
	}

	owner.child.Kill(t)
	close(release)
	wg.Wait()
	close(results)

	for res := range results {
		if res.wrong {
			t.Errorf("wrong bytes served: %v", res.err)
		}
		switch {
		case res.r == owner && res.err != nil:
			t.Logf("client of the killed replica: %v (retrying elsewhere)", res.err)
			// Its retry goes elsewhere, as through a load balancer.
			if wrong, err := getBlob(others[0], "team/big", layer); err != nil || wrong {
				t.Errorf("retry through replica %d: %v", others[0].i, err)
			}
		case res.r == owner:
			t.Error("the killed replica's client got the whole blob: the kill came too late to test anything")
		case res.err != nil:
			t.Errorf("a client of surviving replica %d saw the holder's death: %v", res.r.i, res.err)
		}
	}
	// The dead holder's fetch, and one by the replica that took over: the
	// other survivor resumed from that one, not from the upstream.
	if n := c.blobFetches(layer); n != 2 {
		t.Errorf("the upstream sent the blob %d times, want 2 (the dead holder's and one takeover)", n)
	}
	// Every survivor serves the blob, and the bucket holds it whole.
	for _, r := range others {
		if wrong, err := getBlob(r, "team/big", layer); err != nil || wrong {
			t.Errorf("pull after the takeover through replica %d: %v", r.i, err)
		}
	}
	ts.WaitFor(t, 20*time.Second, "the blob lands in the bucket", func() bool {
		return len(c.s3.Objects(t, blobKey(layer))) > 0
	})
	c.checkBucket(t)
	if n := c.s3.PendingUploads(t, ""); len(n) > 1 {
		// The killed replica may leave its own upload unfinished, never
		// visible as an object; survivors leave none.
		t.Errorf("pending multipart uploads: %v", n)
	}
}

// TestRedisStopsMidFill stops Redis while one replica fetches a blob and
// the other two stream its fill: nothing of a running fill needs Redis,
// so every client gets the whole blob, and the next cold pulls fill alone.
func TestRedisStopsMidFill(t *testing.T) {
	up := ts.Profiles()[0].Start(t) // plain: the held body is the registry's own
	img := up.Push(t, "team/big:v1", 1, 8<<20)
	up.Push(t, "team/next:v1", 1, 1<<20)
	layer := ts.LayerDigests(t, img)[0]
	release := make(chan struct{})
	up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer, Times: 1,
		Action: ts.HoldBody(1<<20, release)})
	c := startCluster(t, up, 3, options{})

	errs := make(chan error, len(c.replicas))
	var wg sync.WaitGroup
	get := func(r *replica) {
		wg.Go(func() {
			wrong, err := getBlob(r, "team/big", layer)
			if wrong {
				t.Errorf("wrong bytes: %v", err)
			}
			errs <- err
		})
	}
	get(c.replicas[0])
	holder := c.waitLease(t, layer)
	for _, r := range c.replicas {
		if r.peer != holder {
			get(r)
			ts.WaitUntil(t, 20*time.Second, "replica streams the holder's fill", func() (bool, string) {
				v := r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "peer"})
				return v >= 1, fmt.Sprint(v)
			})
		}
	}
	c.redis.Stop(t)
	for _, r := range c.replicas {
		ts.WaitUntil(t, 10*time.Second, "replica sees Redis down", func() (bool, string) {
			v := r.metric(t, "multiproxy_coordination_up", nil)
			return v == 0, fmt.Sprint(v)
		})
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a client of a fill running when Redis stopped: %v", err)
		}
	}
	if n := c.blobFetches(layer); n != 1 {
		t.Errorf("the upstream sent the blob %d times, want 1", n)
	}
	for _, r := range c.replicas {
		if err := pullAll(r, "team/next:v1"); err != nil {
			t.Errorf("cold pull without Redis: %v", err)
		}
	}
	c.checkBucket(t)
}

// TestLyingUpstreamNeverReachesTheBucket: an upstream that sends a
// blob's wrong bytes fails the pull on every replica and leaves nothing in
// the bucket, not even an unfinished upload; once it sends the right
// bytes, the pull works.
func TestLyingUpstreamNeverReachesTheBucket(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 1, 2<<20)
	layer := ts.LayerDigests(t, img)[0]
	remove := up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer, Action: ts.FlipByte(1 << 20)})
	c := startCluster(t, up, 3, options{})
	var wg sync.WaitGroup
	for _, r := range c.replicas {
		wg.Go(func() {
			wrong, err := getBlob(r, "team/app", layer)
			if wrong {
				t.Errorf("replica %d served the wrong bytes as complete: %v", r.i, err)
			}
			if err == nil {
				t.Errorf("replica %d served a blob the upstream corrupted", r.i)
			}
		})
	}
	wg.Wait()
	if objs := c.s3.Objects(t, blobKey(layer)); len(objs) != 0 {
		t.Errorf("the corrupted blob is in the bucket: %v", objs)
	}
	if p := c.s3.PendingUploads(t, ""); len(p) != 0 {
		t.Errorf("unfinished uploads of corrupted bytes: %v", p)
	}
	remove()
	for _, r := range c.replicas {
		if wrong, err := getBlob(r, "team/app", layer); err != nil || wrong {
			t.Errorf("pull after the upstream recovered, replica %d: %v", r.i, err)
		}
	}
	c.checkBucket(t)
}
