package ha

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// s3Gate sits between one replica and the bucket. Once armed, it parks
// that replica's first Stat of a blob after its first deletion: the sweep
// Stats each candidate just before deciding to delete it, so the
// collector is held mid-sweep, between two deletions, deterministically.
// It counts the deletions that reach the bucket.
type s3Gate struct {
	url     string
	held    chan struct{} // closed when a request is parked
	release chan struct{} // closed to let it through
	deletes atomic.Int64  // DeleteObjects and DELETE requests forwarded

	mu      sync.Mutex
	armed   bool
	deleted bool
	holding bool
	// holdOnly, if set, narrows the HEADs that may be parked to the paths
	// it accepts: the collector's, when pulls through the same replica
	// HEAD other blobs.
	holdOnly func(path string) bool
}

func newS3Gate(t *testing.T, gateway string) *s3Gate {
	target, err := url.Parse(gateway)
	if err != nil {
		t.Fatal(err)
	}
	g := &s3Gate{held: make(chan struct{}), release: make(chan struct{})}
	// The Host header stays the one the driver signed (SigV4).
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isDelete := r.Method == http.MethodDelete || (r.Method == http.MethodPost && r.URL.Query().Has("delete"))
		g.mu.Lock()
		hold := g.armed && g.deleted && !g.holding && r.Method == http.MethodHead &&
			strings.Contains(r.URL.Path, "/blobs/") && strings.HasSuffix(r.URL.Path, "/data") &&
			(g.holdOnly == nil || g.holdOnly(r.URL.Path))
		if hold {
			g.holding = true
		}
		if isDelete && g.armed {
			g.deleted = true
		}
		g.mu.Unlock()
		if hold {
			close(g.held)
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		if isDelete {
			g.deletes.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		g.open()
		srv.Close()
	})
	g.url = srv.URL
	return g
}

func (g *s3Gate) arm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed = true
}

// open lets the parked request through; it may be called more than once.
func (g *s3Gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// pullLoop pulls image through each replica until stopped, counting
// pulls and failures.
type pullLoop struct {
	stop            chan struct{}
	once            sync.Once
	wg              sync.WaitGroup
	pulls, failures atomic.Int64
}

func startPulls(t *testing.T, image string, through ...*replica) *pullLoop {
	p := &pullLoop{stop: make(chan struct{})}
	// A test that stops early stops its pulls before its replicas.
	t.Cleanup(func() {
		p.once.Do(func() { close(p.stop) })
		p.wg.Wait()
	})
	for _, r := range through {
		p.wg.Go(func() {
			for {
				select {
				case <-p.stop:
					return
				default:
				}
				p.pulls.Add(1)
				if err := pullAll(r, image); err != nil {
					p.failures.Add(1)
					t.Errorf("pull of %s: %v", image, err)
				}
			}
		})
	}
	return p
}

func (p *pullLoop) end(t *testing.T) {
	p.once.Do(func() { close(p.stop) })
	p.wg.Wait()
	t.Logf("%d pulls, %d failed", p.pulls.Load(), p.failures.Load())
}

// collect asks r to collect and returns the status and body.
func collect(t *testing.T, r *replica) (int, string) {
	t.Helper()
	resp, err := http.Post(r.adminURL()+"/api/v1/gc?upstream="+upstreamName, "", nil)
	if err != nil {
		t.Errorf("replica %d gc: %v", r.i, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// checkManifestsComplete fails the test if a manifest the bucket holds
// references a blob the bucket does not: a pull of it would fail once the
// replicas' local copies are gone.
func (c *cluster) checkManifestsComplete(t *testing.T) int {
	t.Helper()
	v2 := filepath.Join(c.s3.Dir, "multiproxy", upstreamName, "docker", "registry", "v2")
	blob := func(d string) string {
		hex := strings.TrimPrefix(d, "sha256:")
		return filepath.Join(v2, "blobs", "sha256", hex[:2], hex, "data")
	}
	n := 0
	err := filepath.WalkDir(filepath.Join(v2, "repositories"), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if e.IsDir() || e.Name() != "link" || filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(p)))) != "revisions" {
			return nil
		}
		link, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		raw, err := os.ReadFile(blob(string(link)))
		if err != nil {
			t.Errorf("manifest %s is linked at %s but its bytes are gone", link, p)
			return nil
		}
		var m struct {
			Config    *struct{ Digest string }  `json:"config"`
			Layers    []struct{ Digest string } `json:"layers"`
			Manifests []struct{ Digest string } `json:"manifests"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", link, err)
		}
		refs := []string{}
		if m.Config != nil {
			refs = append(refs, m.Config.Digest)
		}
		for _, l := range m.Layers {
			refs = append(refs, l.Digest)
		}
		for _, l := range m.Manifests {
			refs = append(refs, l.Digest)
		}
		for _, d := range refs {
			if _, err := os.Stat(blob(d)); err != nil {
				t.Errorf("manifest %s references %s, which the bucket no longer holds", link, d)
			}
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatalf("walk bucket manifests: %v", err)
	}
	return n
}

// fencedCluster is two replicas with replica 0's bucket traffic through a
// gate, an image (team/old) the policy evicts with blobs for a sweep, and
// a hot one that stays.
func fencedCluster(t *testing.T) (*cluster, *s3Gate) {
	c, gate, _ := fencedClusterOf(t, 2)
	return c, gate
}

// fencedClusterOf is fencedCluster with n replicas; it also returns the
// evicted image.
func fencedClusterOf(t *testing.T, n int) (*cluster, *s3Gate, v1.Image) {
	up := tokenCDN(t)
	old := up.Push(t, "team/old:v1", 6, 256<<10)
	up.Push(t, "team/hot:v1", 2, 256<<10)
	var gate *s3Gate
	c := startCluster(t, up, n, options{
		// A short fill_timeout lets a collection sweep what this test
		// wrote seconds ago: blobs are kept for fill_timeout after the
		// collection's start, by the bucket's clock.
		extra: "    max_size: 1MiB\n    fill_timeout: 2s\n",
		s3Endpoint: func(i int, gateway string) string {
			if i != 0 {
				return gateway
			}
			gate = newS3Gate(t, gateway)
			return gate.url
		}})
	if err := pullAll(c.replicas[0], "team/old:v1"); err != nil {
		t.Fatal(err)
	}
	// A first collection: until one has ended, replicas cannot tell that
	// none runs (a new Redis looks like one that lost its data), so they
	// keep what they serve for the next and it spares all of that.
	if code, body := collect(t, c.replicas[1]); code != http.StatusOK {
		t.Fatalf("first collection: %d %s", code, body)
	}
	time.Sleep(1100 * time.Millisecond) // pull times have one-second resolution
	for _, r := range c.replicas {
		if err := pullAll(r, "team/hot:v1"); err != nil {
			t.Fatal(err)
		}
	}
	return c, gate, old
}

// TestPausedCollectorDeletesNothingAfterWaking: the replica collecting is
// stopped by the kernel (SIGSTOP) mid-sweep for longer than lease_ttl;
// another replica collects meanwhile and the evicted image is pulled back;
// on SIGCONT the first one's collection stops before deleting anything
// more. No pull fails and every manifest in the bucket keeps its blobs.
func TestPausedCollectorDeletesNothingAfterWaking(t *testing.T) {
	c, gate := fencedCluster(t)
	a, b := c.replicas[0], c.replicas[1]
	pulls := startPulls(t, "team/hot:v1", b)

	gate.arm()
	type reply struct {
		code int
		body string
	}
	first := make(chan reply, 1)
	go func() {
		code, body := collect(t, a)
		first <- reply{code, body}
	}()
	select {
	case <-gate.held:
	case r := <-first:
		t.Fatalf("the collection ended before its sweep was held: %d %s", r.code, r.body)
	case <-time.After(60 * time.Second):
		t.Fatal("replica 0's collection never reached its sweep")
	}
	if err := a.child.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = a.child.Signal(syscall.SIGCONT)
		}
	}()
	before := gate.deletes.Load()

	// The image the stopped collector evicted is pulled again, through
	// the other replica: its manifest is back, over blobs that stayed in
	// the bucket, which the stopped collector still has on its list.
	oldPulls := startPulls(t, "team/old:v1", b)
	// Another replica collects meanwhile; its lease waits out the
	// stopped one's, and the pulls' claims spare both images.
	if code, body := collect(t, b); code != http.StatusOK {
		t.Fatalf("replica 1 gc: %d %s", code, body)
	}

	if err := a.child.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	gate.open()
	var r reply
	select {
	case r = <-first:
	case <-time.After(60 * time.Second):
		t.Fatal("replica 0's collection did not return after waking")
	}
	pulls.end(t)
	oldPulls.end(t)
	if f := oldPulls.failures.Load(); f != 0 {
		t.Errorf("%d of %d pulls of the re-pulled image failed", f, oldPulls.pulls.Load())
	}
	if r.code == http.StatusOK {
		t.Errorf("replica 0's collection succeeded after losing its lease: %s", r.body)
	}
	if n := gate.deletes.Load() - before; n != 0 {
		t.Errorf("replica 0 sent %d deletions to the bucket after waking", n)
	}
	if !strings.Contains(a.child.Logs(), "lease lost") {
		t.Errorf("replica 0 did not log its lost lease")
	}
	if pulls.failures.Load() != 0 {
		t.Errorf("%d of %d pulls failed", pulls.failures.Load(), pulls.pulls.Load())
	}
	if n := c.checkManifestsComplete(t); n < 2 {
		t.Errorf("the bucket holds %d manifests, want team/old and team/hot", n)
	}
	for _, r := range c.replicas {
		for _, img := range []string{"team/old:v1", "team/hot:v1"} {
			if err := pullAll(r, img); err != nil {
				t.Errorf("pull after the collections: %v", err)
			}
		}
	}
}

// TestRedisRestartMidCollection: Redis restarts without persistence while
// a collection sweeps and all three replicas serve pulls, one of them
// pulling back the image the collection evicted. The collector loses its
// lease and deletes nothing more; no collection starts for lease_ttl after
// the restart, and the next one spares what replicas served meanwhile; no
// pull fails and no blob a stored manifest references is gone.
func TestRedisRestartMidCollection(t *testing.T) {
	c, gate, old := fencedClusterOf(t, 3)
	a, b, other := c.replicas[0], c.replicas[1], c.replicas[2]
	// Pulls through the collector HEAD the hot image's blobs in the
	// bucket too: only the sweep's HEAD of an evicted blob is held.
	oldBlobs := ts.BlobDigests(t, old)
	gate.holdOnly = func(path string) bool {
		for _, d := range oldBlobs {
			if strings.Contains(path, strings.TrimPrefix(d, "sha256:")) {
				return true
			}
		}
		return false
	}
	pulls := startPulls(t, "team/hot:v1", a, b, other)

	gate.arm()
	first := make(chan int, 1)
	go func() {
		code, _ := collect(t, a)
		first <- code
	}()
	select {
	case <-gate.held:
	case code := <-first:
		t.Fatalf("the collection ended (%d) before its sweep was held", code)
	case <-time.After(60 * time.Second):
		t.Fatal("replica 0's collection never reached its sweep")
	}
	before := gate.deletes.Load()
	c.redis.Stop(t)
	restarted := time.Now() // the new Redis's data is younger than this
	c.redis.Start(t)
	// The image replica 0 evicted is pulled back while its blobs are on
	// replica 0's list, through a replica whose claims Redis lost or
	// never got: they must reach the next collection.
	oldPulls := startPulls(t, "team/old:v1", other)
	// Every replica sees Redis back before the next collection is asked
	// for, so that it waits on Redis's data, not on a probe: a collection
	// waits at most a lease TTL for Redis to come back.
	for _, r := range c.replicas {
		ts.WaitUntil(t, 30*time.Second, "replica sees Redis back", func() (bool, string) {
			v := r.metric(t, "multiproxy_coordination_up", nil)
			return v == 1, fmt.Sprint(v)
		})
	}
	type answer struct {
		code int
		body string
	}
	second := make(chan answer, 1)
	go func() {
		code, body := collect(t, b)
		second <- answer{code, body}
	}()
	ts.WaitUntil(t, 30*time.Second, "the collector finds its lease lost", func() (bool, string) {
		return strings.Contains(a.child.Logs(), "lease lost"), "no 'lease lost' in its log"
	})
	gate.open()
	select {
	case code := <-first:
		if code == http.StatusOK {
			t.Error("replica 0's collection succeeded after Redis lost its lease")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("replica 0's collection did not return")
	}
	if n := gate.deletes.Load() - before; n != 0 {
		t.Errorf("replica 0 sent %d deletions to the bucket after Redis restarted", n)
	}
	select {
	case got := <-second:
		if got.code != http.StatusOK {
			t.Errorf("replica 1 gc after the restart: %d %s", got.code, got.body)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("replica 1's collection did not return")
	}
	// No collection started within a lease TTL of the restart: a
	// collector that has not found its lease lost may still be sweeping.
	const leaseTTL = 2 * time.Second // startCluster's default
	var after []time.Duration
	for _, r := range c.replicas {
		for _, at := range logTimes(t, r.child.Logs(), `msg="collecting for the cluster"`) {
			if at.After(restarted) {
				after = append(after, at.Sub(restarted))
			}
		}
	}
	t.Logf("collections started %v after Redis restarted", after)
	if len(after) == 0 {
		t.Error("no collection started after the restart")
	}
	for _, d := range after {
		if d < leaseTTL {
			t.Errorf("a collection started %v after Redis restarted empty, within lease_ttl %v", d, leaseTTL)
		}
	}
	pulls.end(t)
	oldPulls.end(t)
	if f := pulls.failures.Load() + oldPulls.failures.Load(); f != 0 {
		t.Errorf("%d of %d pulls failed", f, pulls.pulls.Load()+oldPulls.pulls.Load())
	}
	if n := c.checkManifestsComplete(t); n < 2 {
		t.Errorf("the bucket holds %d manifests, want team/old and team/hot", n)
	}
	for _, r := range c.replicas {
		for _, img := range []string{"team/old:v1", "team/hot:v1"} {
			if err := pullAll(r, img); err != nil {
				t.Errorf("pull after the collections: %v", err)
			}
		}
	}
}

// logTimes is the time of each line of a replica's log that contains what.
func logTimes(t *testing.T, logs, what string) []time.Time {
	t.Helper()
	var out []time.Time
	for line := range strings.Lines(logs) {
		if !strings.Contains(line, what) {
			continue
		}
		f, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, f)
		if err != nil {
			t.Fatalf("log line without a time: %q", line)
		}
		out = append(out, at)
	}
	return out
}
