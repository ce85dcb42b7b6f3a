// Package ha tests replicas that share an S3-compatible bucket (versitygw,
// through distribution's s3-aws driver) and a Redis (Debian's
// redis-server, alone or behind redis-sentinel): one upstream fetch per
// blob across the cluster, a crashed lease holder, Redis going away or
// failing over, and garbage collection under load. Each
// replica is a real process (this test binary in multiproxy's server
// mode), so a test can kill -9 one.
package ha

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func TestMain(m *testing.M) {
	ts.RunChildIfAsked()
	os.Exit(m.Run())
}

// upstreamName is the upstream every replica proxies.
const upstreamName = "test.io"

// cluster is three replicas of multiproxy over one bucket and one Redis.
type cluster struct {
	t        *testing.T
	up       *ts.Upstream
	s3       *ts.S3
	redis    *ts.Redis         // nil with options.sentinel
	sentinel *ts.RedisSentinel // set with options.sentinel
	replicas []*replica
}

type replica struct {
	i      int
	dir    string
	cfg    string
	listen string // the upstream's client address
	admin  string
	peer   string
	child  *ts.Child
}

// options tune a cluster's config.
type options struct {
	// extra is appended to the upstream's section (indented two spaces).
	extra string
	// leaseTTL is coordination.lease_ttl.
	leaseTTL string
	// storage is appended to the storage section's s3 keys (indented
	// four spaces), or starts a sibling key at two.
	storage string
	// sentinel has the replicas find Redis through a Sentinel watching a
	// master and its replica, rather than at one address.
	sentinel bool
	// s3Endpoint, if set, is the bucket endpoint replica i is given, in
	// place of the gateway's own: a test puts a proxy there.
	s3Endpoint func(i int, gateway string) string
	// peerToken, if set, is every replica's coordination.peer_token_file
	// content.
	peerToken string
}

func startCluster(t *testing.T, up *ts.Upstream, n int, o options) *cluster {
	t.Helper()
	if o.leaseTTL == "" {
		o.leaseTTL = "2s"
	}
	c := &cluster{t: t, up: up, s3: ts.StartS3(t)}
	var redisYAML string
	if o.sentinel {
		c.sentinel = ts.StartRedisSentinel(t)
		redisYAML = fmt.Sprintf("    password_file: %s\n    sentinel:\n      master: %s\n      addrs: [%s]\n      password_file: %s\n",
			c.sentinel.Servers[0].PasswordFile, c.sentinel.MasterName, c.sentinel.Addr, c.sentinel.PasswordFile)
	} else {
		c.redis = ts.StartRedis(t)
		redisYAML = fmt.Sprintf("    addr: %s\n    password_file: %s\n", c.redis.Addr, c.redis.PasswordFile)
	}
	coordExtra := ""
	if o.peerToken != "" {
		tf := filepath.Join(t.TempDir(), "peer-token")
		if err := os.WriteFile(tf, []byte(o.peerToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		coordExtra = "  peer_token_file: " + tf + "\n"
	}
	for i := range n {
		dir := t.TempDir()
		r := &replica{i: i, dir: dir, listen: ts.FreeAddr(t), admin: ts.FreeAddr(t), peer: ts.FreeAddr(t)}
		r.cfg = filepath.Join(dir, "multiproxy.yaml")
		endpoint := c.s3.Endpoint
		if o.s3Endpoint != nil {
			endpoint = o.s3Endpoint(i, endpoint)
		}
		yaml := fmt.Sprintf(`data_dir: %s
log_level: debug
shutdown_timeout: 5s
admin:
  listen: %s
storage:
  s3:
    endpoint: %s
    region: %s
    bucket: %s
    root: /multiproxy
    access_key_file: %s
    secret_key_file: %s
    force_path_style: true
%scoordination:
  redis:
%s  peer_listen: %s
  advertise: %s
  lease_ttl: %s
%supstreams:
  - name: %s
    listen: %s
    remote: %s
    timeout: 3s
%s`, filepath.Join(dir, "data"), r.admin, endpoint, c.s3.Region, c.s3.Bucket,
			c.s3.AccessKeyFile, c.s3.SecretKeyFile, o.storage, redisYAML,
			r.peer, r.peer, o.leaseTTL, coordExtra, upstreamName, r.listen, up.URL, o.extra)
		if err := os.WriteFile(r.cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		c.replicas = append(c.replicas, r)
	}
	for _, r := range c.replicas {
		r.start(t)
	}
	return c
}

func (r *replica) start(t *testing.T) {
	t.Helper()
	r.child = ts.StartChild(t, r.cfg, r.listen)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica %d log:\n%s", r.i, tail(r.child.Logs(), 60))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (r *replica) adminURL() string { return "http://" + r.admin }

// metric reads one of r's metrics for the test upstream.
func (r *replica) metric(t testing.TB, metric string, labels map[string]string) float64 {
	t.Helper()
	l := map[string]string{"upstream": upstreamName}
	for k, v := range labels {
		l[k] = v
	}
	return ts.Metric(t, r.adminURL(), metric, l)
}

// pullConcurrently pulls repoAndRef with n clients at once, spread over
// the replicas in turn, and reports each failed pull as an error of the
// test, prefixed with what.
func (c *cluster) pullConcurrently(t *testing.T, what, repoAndRef string, n int) {
	t.Helper()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		r := c.replicas[i%len(c.replicas)]
		wg.Go(func() { errs <- pullAll(r, repoAndRef) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}

// wantEachBlobOnce checks that the upstream sent each of img's blobs to the
// cluster exactly once since the counts were last reset.
func (c *cluster) wantEachBlobOnce(t *testing.T, img v1.Image) {
	t.Helper()
	for _, d := range ts.BlobDigests(t, img) {
		if n := c.blobFetches(d); n != 1 {
			t.Errorf("blob %s: the upstream sent it %d times to the cluster, want 1", d, n)
		}
	}
}

// pullAll pulls and verifies an image through r: every blob's bytes, read
// through the replica, checked against their digests.
func pullAll(r *replica, repoAndRef string) error {
	ref, err := name.ParseReference(r.listen+"/"+repoAndRef, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, ts.PullOptions()...)
	if err != nil {
		return fmt.Errorf("replica %d: %w", r.i, err)
	}
	return verify(img)
}

// verify reads every layer and the config and checks their digests.
func verify(img v1.Image) error {
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}
	ls, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range ls {
		want, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %s: %w", want, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want.String() {
			return fmt.Errorf("layer %s: got bytes hashing to %s", want, got)
		}
	}
	return nil
}

// blobFetches is how many times the upstream sent blob d's bytes: GETs at
// its CDN, or at the registry for a profile without one.
func (c *cluster) blobFetches(d string) int {
	if c.up.CDN != nil {
		return c.up.CDN.Count(http.MethodGet, d)
	}
	return c.up.Faults.Count(http.MethodGet, "/blobs/"+d)
}

// checkBucket fails the test if any blob in the bucket does not hash to
// the digest its path names, or if an upload was left incomplete: nothing
// torn or wrong is ever visible to a replica reading the bucket. It
// returns how many blobs it checked.
func (c *cluster) checkBucket(t *testing.T) int {
	t.Helper()
	root := filepath.Join(c.s3.Dir, "multiproxy", upstreamName, "docker", "registry", "v2", "blobs")
	n := 0
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if e.IsDir() || e.Name() != "data" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if want := filepath.Base(filepath.Dir(p)); hex.EncodeToString(sum[:]) != want {
			t.Errorf("bucket object %s holds bytes hashing to sha256:%x", p, sum)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatalf("walk bucket: %v", err)
	}
	return n
}

// waitLease waits until some replica holds the fill lease of digest d and
// returns the holder's peer address.
func (c *cluster) waitLease(t *testing.T, d string) string {
	t.Helper()
	key := "multiproxy:fill:" + upstreamName + ":" + d
	var holder string
	ts.WaitUntil(t, 20*time.Second, "a replica takes the fill lease", func() (bool, string) {
		v, err := c.redis.Client().Get(t.Context(), key).Result()
		if err != nil {
			return false, err.Error()
		}
		holder, _, _ = strings.Cut(v, "|")
		return true, ""
	})
	return holder
}

// get returns the status and body of a GET.
func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// blobKey is the bucket key of blob d's bytes.
func blobKey(d string) string {
	return "multiproxy/" + upstreamName + "/docker/registry/v2/blobs/sha256/" + d[7:9] + "/" + d[7:] + "/data"
}
