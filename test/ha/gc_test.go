package ha

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestCollectionDuringPullsOnAllReplicas asks all three replicas to
// collect at once while clients pull through each: the collections run
// one after another (never two leaders in the metrics at once), the
// least recently pulled image is evicted from the bucket, and no pull
// fails.
func TestCollectionDuringPullsOnAllReplicas(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/old:v1", 2, 2<<20)
	hot := up.Push(t, "team/hot:v1", 2, 2<<20)
	// Room for one image: a collection must evict one of the two.
	c := startCluster(t, up, 3, options{extra: "    max_size: 6MiB\n"})
	if err := pullAll(c.replicas[0], "team/old:v1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // pull times have one-second resolution
	for _, r := range c.replicas {
		if err := pullAll(r, "team/hot:v1"); err != nil {
			t.Fatal(err)
		}
	}

	stop := make(chan struct{})
	var pulls, failures atomic.Int64
	var pullers sync.WaitGroup
	for _, r := range c.replicas {
		pullers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				pulls.Add(1)
				if err := pullAll(r, "team/hot:v1"); err != nil {
					failures.Add(1)
					t.Errorf("pull during collection: %v", err)
				}
			}
		})
	}

	// Sample every replica's leader gauge while the collections run.
	var maxLeaders, sawLeader atomic.Int64
	sampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-sampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
			var n int64
			for _, r := range c.replicas {
				if r.metric(t, "multiproxy_gc_leader", nil) == 1 {
					n++
				}
			}
			if n > maxLeaders.Load() {
				maxLeaders.Store(n)
			}
			if n > 0 {
				sawLeader.Add(1)
			}
		}
	})

	type gcResult struct {
		FreedBlobs int `json:"freed_blobs"`
		Evicted    []struct {
			Repository string `json:"repository"`
		} `json:"evicted"`
	}
	results := make([]gcResult, len(c.replicas))
	var collectors sync.WaitGroup
	for i, r := range c.replicas {
		collectors.Go(func() {
			resp, err := http.Post(r.adminURL()+"/api/v1/gc?upstream="+upstreamName, "", nil)
			if err != nil {
				t.Errorf("replica %d gc: %v", r.i, err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("replica %d gc: %s", r.i, resp.Status)
				return
			}
			if err := json.NewDecoder(resp.Body).Decode(&results[i]); err != nil {
				t.Errorf("replica %d gc result: %v", r.i, err)
			}
		})
	}
	collectors.Wait()
	close(stop)
	pullers.Wait()
	close(sampling)
	sampler.Wait()

	t.Logf("%d pulls during the collections, %d failed; %d samples with a leader", pulls.Load(), failures.Load(), sawLeader.Load())
	if failures.Load() != 0 {
		t.Errorf("%d of %d pulls failed during garbage collection", failures.Load(), pulls.Load())
	}
	if m := maxLeaders.Load(); m != 1 {
		t.Errorf("at most %d replicas held the collection lease at once, want exactly 1 seen", m)
	}
	var evicted []string
	for _, res := range results {
		for _, e := range res.Evicted {
			evicted = append(evicted, e.Repository)
		}
	}
	if len(evicted) == 0 || strings.Contains(strings.Join(evicted, " "), "team/hot") {
		t.Errorf("evicted %v, want team/old (the least recently pulled) and never team/hot", evicted)
	}
	// The bucket no longer holds the old image's layers, and still holds
	// every blob of the hot one.
	objs := c.s3.Objects(t, "multiproxy/"+upstreamName+"/docker/registry/v2/blobs/")
	for _, d := range ts.BlobDigests(t, hot) {
		key := fmt.Sprintf("multiproxy/%s/docker/registry/v2/blobs/sha256/%s/%s/data", upstreamName, d[7:9], d[7:])
		if _, ok := objs[key]; !ok {
			t.Errorf("collection removed %s of the image being pulled", d)
		}
	}
	c.checkBucket(t)
	// Pull times are kept for what the bucket holds: the evicted image's
	// record went with it, the hot one's stays.
	keys, err := c.redis.Client().HKeys(t.Context(), "multiproxy:pulls:"+upstreamName).Result()
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(keys, " ")
	if strings.Contains(all, "team/old@") || !strings.Contains(all, "team/hot@") {
		t.Errorf("pull records after the collection: %v; want team/hot's only", keys)
	}
	// The evicted image comes back on the next pull.
	for _, r := range c.replicas {
		if err := pullAll(r, "team/old:v1"); err != nil {
			t.Errorf("pull of the evicted image: %v", err)
		}
	}
}

// TestScheduledCollectionRunsOnceAcrossReplicas: every replica's cron
// fires in the same slot; one collects the shared bucket, the others wait
// for its lease and then skip, since the slot's collection is done.
func TestScheduledCollectionRunsOnceAcrossReplicas(t *testing.T) {
	up := tokenCDN(t)
	up.Push(t, "team/app:v1", 1, 1<<20)
	c := startCluster(t, up, 3, options{extra: "    gc:\n      schedule: \"* * * * *\"\n"})
	if err := pullAll(c.replicas[0], "team/app:v1"); err != nil {
		t.Fatal(err)
	}
	runs := func() (ran, skipped int) {
		for _, r := range c.replicas {
			ran += int(r.metric(t, "multiproxy_gc_runs_total", map[string]string{"result": "success"}))
			skipped += strings.Count(r.child.Logs(), `msg="gc skipped"`)
		}
		return ran, skipped
	}
	// The next minute's slot, plus the two waits for the lease.
	ts.WaitUntil(t, 80*time.Second, "every replica's slot fired and ended", func() (bool, string) {
		ran, skipped := runs()
		return ran+skipped >= len(c.replicas), fmt.Sprintf("%d collected, %d skipped", ran, skipped)
	})
	if ran, skipped := runs(); ran != 1 || skipped != len(c.replicas)-1 {
		t.Errorf("one cron slot on %d replicas: %d collections, %d skipped; want 1 and %d", len(c.replicas), ran, skipped, len(c.replicas)-1)
	}
}
