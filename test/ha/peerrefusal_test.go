package ha

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// restartWithPeerToken restarts r with token as its
// coordination.peer_token_file content: a replica whose token differs
// from the others'.
func (r *replica) restartWithPeerToken(t *testing.T, token string) {
	t.Helper()
	r.child.Kill(t)
	tf := filepath.Join(t.TempDir(), "peer-token")
	if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "peer_token_file:") {
			line = "  peer_token_file: " + tf
		}
		out = append(out, line)
	}
	if err := os.WriteFile(r.cfg, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	r.start(t)
}

// TestPeerTokenMismatchFetchesAloneAtOnce: two replicas whose peer tokens
// differ. Replica 0 holds the fill leases of an image's layers, its
// upstream reads slow; a cold pull of the image through replica 1
// is refused by replica 0's peer port (401) and fetches alone at once,
// instead of polling the holder until the lease TTL runs out. Replica 1
// says so once, naming the peer, not once per blob.
func TestPeerTokenMismatchFetchesAloneAtOnce(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 2, 1<<20)
	layers := ts.LayerDigests(t, img)
	c := startCluster(t, up, 2, options{peerToken: "peer-secret-a", leaseTTL: "30s"})
	holder, other := c.replicas[0], c.replicas[1]
	other.restartWithPeerToken(t, "peer-secret-b")

	// Replica 0's fills run for 16 s each: slow, but never idle long
	// enough to fail and free their leases.
	for _, l := range layers {
		up.Faults.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + l, Times: 1, Action: ts.Throttle(64 << 10)})
		go func() { _, _ = getBlob(holder, "team/app", l) }()
		if h := c.waitLease(t, l); h != holder.peer {
			t.Fatalf("lease of %s held by %q, want replica 0's %q", l, h, holder.peer)
		}
	}

	start := time.Now()
	err := pullAll(other, "team/app:v1")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("cold pull through the replica whose peer token differs: %v", err)
	}
	t.Logf("whole verified image through replica 1 after %v (lease TTL 30s, upstream timeout %v)", took, upstreamTimeout)
	// Only catches the wait: polling a holder that refuses lasts the
	// lease TTL and twice the upstream timeout.
	if limit := 2 * upstreamTimeout; took > limit {
		t.Errorf("the pull took %v past a peer refusing the token, want under %v", took, limit)
	}
	logs := other.child.Logs()
	if n := strings.Count(logs, "peer refused this replica's peer token"); n != 1 {
		t.Errorf("replica 1 logged the refusal %d times for %d refused blobs, want once", n, len(layers))
	} else if line := logs[strings.Index(logs, "peer refused this replica's peer token"):]; !strings.Contains(strings.SplitN(line, "\n", 2)[0], holder.peer) {
		t.Errorf("replica 1's refusal does not name the peer %s: %s", holder.peer, strings.SplitN(line, "\n", 2)[0])
	}
	if n := other.metric(t, "multiproxy_fills_uncoordinated_total", nil); n != float64(len(layers)) {
		t.Errorf("replica 1 filled %v blobs alone, want %d (the layers replica 0 refused)", n, len(layers))
	}
}

// TestRedirectingPeerIsNotFollowed: the fill lease of a blob is held by an
// address that answers peer requests with a redirect to another listener.
// The replica follows no redirect (that listener sees no connection), takes
// the answer as no peer's, and fetches the blob alone at once.
func TestRedirectingPeerIsNotFollowed(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:v1", 1, 1<<20)
	layer := ts.LayerDigests(t, img)[0]
	c := startCluster(t, up, 1, options{})
	target, accepted := silentPeer(t)
	var asked atomic.Int64
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.Redirect(w, r, "http://"+target+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	c.holdLease(t, layer, strings.TrimPrefix(redirector.URL, "http://"))

	start := time.Now()
	wrong, err := getBlob(c.replicas[0], "team/app", layer)
	took := time.Since(start)
	if err != nil || wrong {
		t.Fatalf("client of a fill whose lease holder redirects: %v", err)
	}
	t.Logf("whole verified blob after %v; the redirector was asked %d times, its target saw %d connections",
		took, asked.Load(), accepted.Load())
	if asked.Load() == 0 {
		t.Error("the replica never asked the lease holder: the test did not test the redirect")
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the redirect's target saw %d connections from the replica", n)
	}
	// Only catches a wait: polling the redirector lasts the lease TTL and
	// twice the upstream timeout.
	if took > upstreamTimeout {
		t.Errorf("the client waited %v past a redirecting holder, want under %v", took, upstreamTimeout)
	}
	if n := c.replicas[0].metric(t, "multiproxy_fills_uncoordinated_total", nil); n != 1 {
		t.Errorf("fills made alone = %v, want 1", n)
	}
}
