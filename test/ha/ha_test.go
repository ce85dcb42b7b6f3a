package ha

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// tokenCDN is the upstream kind most pulls meet (docker.io, ghcr.io,
// quay.io): bearer tokens per repository and blobs redirected to a CDN.
func tokenCDN(t *testing.T) *ts.Upstream {
	for _, p := range ts.Profiles() {
		if p.Name == "token-cdn" {
			return p.Start(t)
		}
	}
	t.Fatal("no token-cdn profile")
	return nil
}

// TestColdPullsAcrossReplicasFetchEachBlobOnce is the point of the mode:
// 16 clients pulling one new image through three replicas make the
// upstream send each blob once, and every client gets verified bytes.
func TestColdPullsAcrossReplicasFetchEachBlobOnce(t *testing.T) {
	up := tokenCDN(t)
	img := up.Push(t, "team/app:v1", 3, 4<<20)
	c := startCluster(t, up, 3, options{})
	up.Faults.ResetCounts()

	const clients = 16
	c.pullConcurrently(t, "pull", "team/app:v1", clients)
	c.wantEachBlobOnce(t, img)
	if n := up.CDN.AuthorizationSeen(); n != 0 {
		t.Errorf("%d CDN requests carried Authorization", n)
	}
	// Manifest GETs count against pull limits (Docker Hub): one for the
	// cluster too. Each replica still revalidates the tag with a HEAD.
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if n := up.Faults.Count(http.MethodGet, "/manifests/"+d.String()); n != 1 {
		t.Errorf("the upstream served the manifest %d times to the cluster, want 1", n)
	}
	// Every replica answered its clients with bytes, and the upstream's
	// bytes came in once in all.
	var fetched float64
	for _, r := range c.replicas {
		fetched += r.metric(t, "multiproxy_upstream_fetched_bytes_total", nil)
		if n := r.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 0 {
			t.Errorf("replica %d filled %v times without the lease", r.i, n)
		}
	}
	var peer float64
	for _, r := range c.replicas {
		peer += r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "peer"}) +
			r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "bucket"})
	}
	if peer == 0 {
		t.Error("no replica filled from another's running fill or the bucket: the fan-out did not cross replicas")
	}
	t.Logf("fills from a peer or the bucket: %v", peer)
	if want := float64(ts.ImageBytes(t, img)); fetched < want || fetched > want*1.01 {
		t.Errorf("upstream bytes fetched by the cluster = %.0f, want the image's %.0f", fetched, want)
	}
	if n := c.checkBucket(t); n < len(ts.BlobDigests(t, img)) {
		t.Errorf("bucket holds %d blobs, want at least %d", n, len(ts.BlobDigests(t, img)))
	}

	// A replica that never served the image has it warm now: from the
	// bucket, without the upstream.
	up.CDN.ResetCounts()
	for _, r := range c.replicas {
		if err := pullAll(r, "team/app:v1"); err != nil {
			t.Fatal(err)
		}
	}
	if n := up.CDN.Count("GET", ""); n != 0 {
		t.Errorf("warm pulls sent %d GETs to the upstream's CDN", n)
	}
}

// TestRedisDownPullsGoOn stops Redis mid-run: replicas go on serving what
// the bucket has and fill new blobs alone, counting the fills made
// without the lease, and /readyz says degraded without taking the replica
// out of a load balancer.
func TestRedisDownPullsGoOn(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/old:v1", 2, 1<<20)
	up.Push(t, "team/new:v1", 2, 1<<20)
	c := startCluster(t, up, 3, options{})
	if err := pullAll(c.replicas[0], "team/old:v1"); err != nil {
		t.Fatal(err)
	}

	c.redis.Stop(t)
	for _, r := range c.replicas {
		ts.WaitUntil(t, 10*time.Second, "replica sees Redis down", func() (bool, string) {
			v := r.metric(t, "multiproxy_coordination_up", nil)
			return v == 0, fmt.Sprint(v)
		})
	}
	for _, r := range c.replicas {
		if err := pullAll(r, "team/old:v1"); err != nil {
			t.Errorf("cached image without Redis: %v", err)
		}
		if err := pullAll(r, "team/new:v1"); err != nil {
			t.Errorf("new image without Redis: %v", err)
		}
	}
	var alone float64
	for _, r := range c.replicas {
		alone += r.metric(t, "multiproxy_fills_uncoordinated_total", nil)
		code, body := get(t, r.adminURL()+"/readyz")
		if code != 200 || !strings.Contains(body, `"degraded"`) || !strings.Contains(body, "coordination") {
			t.Errorf("replica %d /readyz = %d %s, want 200 saying degraded by coordination", r.i, code, body)
		}
	}
	if alone == 0 {
		t.Error("fills without Redis were not counted in multiproxy_fills_uncoordinated_total")
	}
	// Nobody collects the shared bucket without the cluster's lease.
	resp, err := http.Post(c.replicas[0].adminURL()+"/api/v1/gc?upstream="+upstreamName, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("a collection of the shared bucket ran without Redis")
	}
	if err := pullAll(c.replicas[1], "team/old:v1"); err != nil {
		t.Errorf("pull after the refused collection: %v", err)
	}

	// Redis back: coordination resumes and readiness clears.
	c.redis.Start(t)
	for _, r := range c.replicas {
		ts.WaitUntil(t, 10*time.Second, "replica sees Redis back", func() (bool, string) {
			_, body := get(t, r.adminURL()+"/readyz")
			return !strings.Contains(body, "degraded"), body
		})
	}
}

// TestTagRevalidationsStayPerReplica measures what coalescing tag
// revalidations across replicas could save: 48 concurrent resolves of one
// tag over 3 replicas, the upstream answering HEAD in 200 ms as across the
// internet, cost at most two upstream HEADs per replica, as on a single VM
// (each coalesces its own; a resolve arriving just after a HEAD returned
// starts the next). Coalescing across replicas would save at most four
// HEADs per burst and cost a Redis round trip on every resolve, cached or
// not. We do not coalesce across replicas; this test holds the bound that
// makes it unnecessary.
func TestTagRevalidationsStayPerReplica(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/app:v1", 1, 1<<10)
	c := startCluster(t, up, 3, options{})
	for _, r := range c.replicas {
		if err := pullAll(r, "team/app:v1"); err != nil {
			t.Fatal(err)
		}
	}
	up.Faults.Add(ts.Rule{Method: http.MethodHead, PathContains: "/manifests/v1", Action: ts.Delay(200 * time.Millisecond)})
	up.Faults.ResetCounts()
	var wg sync.WaitGroup
	for i := range 48 {
		r := c.replicas[i%3]
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodHead, "http://"+r.listen+"/v2/team/app/manifests/v1", nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("HEAD through replica %d: %s", r.i, resp.Status)
			}
		})
	}
	wg.Wait()
	heads := up.Faults.Count(http.MethodHead, "/manifests/v1")
	t.Logf("48 concurrent resolves over 3 replicas: %d upstream HEADs", heads)
	if heads > 2*len(c.replicas) {
		t.Errorf("%d upstream HEADs for one burst over %d replicas, want at most %d", heads, len(c.replicas), 2*len(c.replicas))
	}
}
