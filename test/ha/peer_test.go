package ha

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// upstreamTimeout is the upstream's timeout in startCluster's config.
const upstreamTimeout = 3 * time.Second

// silentPeer accepts connections and never answers, counting them: a
// black-holed replica.
func silentPeer(t *testing.T) (addr string, accepted *atomic.Int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int64{}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), accepted
}

// holdLease writes d's fill lease into Redis as held by owner, renewed
// by nobody, for longer than the test: what a replica that is alive to
// Redis but unreachable (or a forged entry) looks like to the others.
func (c *cluster) holdLease(t *testing.T, d, owner string) {
	t.Helper()
	key := "multiproxy:fill:" + upstreamName + ":" + d
	if err := c.redis.Client().Set(t.Context(), key, owner+"|forged|0", 5*time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
}

// A replica whose fill lease is held by a peer that accepts connections
// and never answers gives its client the whole blob anyway, fetching it
// alone once the peer has not answered within the upstream timeout,
// instead of waiting out the lease and the peer for minutes.
func TestBlackHoledPeerIsNotWaitedFor(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 1, 2<<20)
	layer := ts.LayerDigests(t, img)[0]
	c := startCluster(t, up, 2, options{})
	hole, accepted := silentPeer(t)
	c.holdLease(t, layer, hole)

	start := time.Now()
	if wrong, err := getBlob(c.replicas[0], "team/app", layer); err != nil || wrong {
		t.Fatalf("client of a fill whose lease holder is black-holed: %v", err)
	}
	took := time.Since(start)
	t.Logf("whole verified blob after %v (upstream timeout %v); the silent peer saw %d connections", took, upstreamTimeout, accepted.Load())
	if accepted.Load() == 0 {
		t.Error("the replica never tried the lease holder: the test did not test the black hole")
	}
	// Only catches a hang: before the bound, a client waited for the
	// peer's headers twice over and the lease TTL besides.
	if limit := 2*upstreamTimeout + 2*time.Second; took > limit {
		t.Errorf("the client waited %v for a black-holed peer, want under %v", took, limit)
	}
	if n := c.replicas[0].metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 1 {
		t.Errorf("fills made alone = %v, want 1 (the one past the silent holder)", n)
	}
}

// A lease owner read from Redis that is not a host:port (a URL, an
// address with a path) is never dialled: the replica fetches alone at
// once and its client gets the blob.
func TestOwnerThatIsNoAddressIsNeverDialled(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 2, 1<<20)
	layers := ts.LayerDigests(t, img)
	c := startCluster(t, up, 1, options{})
	listener, accepted := silentPeer(t)
	owners := []string{"http://" + listener + "/x", listener + "/redirect"}
	for i, owner := range owners {
		c.holdLease(t, layers[i], owner)
		start := time.Now()
		if wrong, err := getBlob(c.replicas[0], "team/app", layers[i]); err != nil || wrong {
			t.Fatalf("owner %q: %v", owner, err)
		}
		if took := time.Since(start); took > upstreamTimeout {
			t.Errorf("owner %q: the client waited %v, as if the owner were waited for", owner, took)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the replica connected %d times to an address taken from a forged owner", n)
	}
}

// With coordination.peer_token_file set, the peer port refuses a request
// without the token, and the cluster still fetches each blob once.
func TestPeerTokenGuardsThePeerPort(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 3, 4<<20)
	c := startCluster(t, up, 3, options{peerToken: "peer-secret-31337"})
	up.Faults.ResetCounts()

	const clients = 12
	c.pullConcurrently(t, "pull", "team/app:v1", clients)
	c.wantEachBlobOnce(t, img)
	var peer float64
	for _, r := range c.replicas {
		peer += r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "peer"}) +
			r.metric(t, "multiproxy_fill_sources_total", map[string]string{"source": "bucket"})
		if n := r.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 0 {
			t.Errorf("replica %d filled %v times without the lease", r.i, n)
		}
	}
	if peer == 0 {
		t.Error("no replica filled from another: the fan-out did not cross replicas")
	}

	// The blob is in every replica's local copies or the bucket now; the
	// peer port serves local copies, so a refusal is the token's doing.
	layer := ts.LayerDigests(t, img)[0]
	url := "http://" + c.replicas[0].peer + "/peer/v1/" + upstreamName + "/blobs/" + layer
	for _, authz := range []string{"", "Bearer wrong-secret-31337", "Bearer peer-secret-3133"} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("peer request with Authorization %q: %s, want 401", authz, resp.Status)
		}
	}
	for _, r := range c.replicas {
		if strings.Contains(r.child.Logs(), "peer-secret-31337") {
			t.Errorf("replica %d logged the peer token", r.i)
		}
	}
}
