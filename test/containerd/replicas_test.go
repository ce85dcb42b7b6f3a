package containerd

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestPullThroughReplicasWithBucketRedirect: two replicas share a bucket
// (versitygw) and a Redis, with storage.s3.redirect. containerd pulls an
// image through the first, which fetches it once from the upstream; a
// second containerd pulls it through the other replica, which has no
// local copy and answers each blob GET with a presigned 307 to the
// bucket. containerd follows it, and the upstream sees nothing more.
func TestPullThroughReplicasWithBucketRedirect(t *testing.T) {
	requireContainerd(t)
	up := ts.Profiles()[1].Start(t) // token-cdn
	img := up.Push(t, "library/alpha:1", 2, 256<<10)
	s3 := ts.StartS3(t)
	redis := ts.StartRedis(t)
	replica := func() *ts.Proxy {
		cfg := ts.NewProxyConfig(t, up.ProxyUpstream(up.Host))
		u := &cfg.Upstreams[0]
		u.Storage.S3 = config.S3{Endpoint: s3.Endpoint, Region: s3.Region, Bucket: s3.Bucket,
			Root: "/mp/" + u.Name, AccessKey: config.Secret(s3.AccessKey), SecretKey: config.Secret(s3.SecretKey),
			ForcePathStyle: true, Redirect: true}
		u.Storage.LocalCache.Dir = u.Storage.Path
		peer := ts.FreeAddr(t)
		cfg.Coordination = config.Coordination{Redis: config.Redis{Addr: redis.Addr, Password: config.Secret(redis.Password)},
			PeerListen: peer, Advertise: peer, LeaseTTL: 2 * time.Second}
		return ts.StartProxyConfig(t, cfg)
	}
	a, b := replica(), replica()

	hosts := func(p *ts.Proxy) string {
		dir := filepath.Join(shortDir(t), "certs.d")
		writeHosts(t, p, dir, ctrdcfg.V2, "")
		return dir
	}
	first := startContainerd(t, shortDir(t), criConfig(hosts(a)))
	first.pull(up.Ref("library/alpha:1"), hosts(a))
	for _, d := range ts.BlobDigests(t, img) {
		ts.WaitFor(t, 20*time.Second, "the blob lands in the bucket", func() bool {
			return len(s3.Objects(t, fmt.Sprintf("mp/%s/docker/registry/v2/blobs/sha256/%s/%s/data", up.Host, d[7:9], d[7:]))) > 0
		})
	}
	up.CDN.ResetCounts()

	second := startContainerd(t, shortDir(t), criConfig(hosts(b)))
	second.pull(up.Ref("library/alpha:1"), hosts(b))
	if n := up.CDN.Count("GET", ""); n != 0 {
		t.Errorf("the second pull made the upstream's CDN send %d blobs; the bucket holds them all", n)
	}
	redirects := ts.Metric(t, b.AdminURL(), "multiproxy_requests_total", map[string]string{"upstream": up.Host, "kind": "blob", "code": "307"})
	if want := float64(len(ts.BlobDigests(t, img))); redirects < want {
		t.Errorf("the second replica redirected %v blob GETs to the bucket, want %v (containerd must have got the bytes elsewhere)", redirects, want)
	}
}
