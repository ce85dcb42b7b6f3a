package containerd

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestCRIPullThroughCache pulls as the kubelet does: through containerd's
// CRI plugin, over its gRPC API (runtime.v1), with the hosts.toml files in
// the plugin's config_path. For each kind of upstream, a multi-layer image
// and the node's child of a multi-arch index come through multiproxy, as
// requireThroughCache proves, and the CRI image service then reports them.
func TestCRIPullThroughCache(t *testing.T) {
	requireContainerd(t)
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/app:1", 3, 192<<10)
		idx := up.PushIndex(t, "library/multi:1")
		r := startRig(t, up, ctrdcfg.V16)
		c := r.cri()

		// The CRI plugin picks the node's platform, as the kubelet's pulls do.
		child := ts.IndexChild(t, idx, runtime.GOARCH)
		c.pull(up.Ref("library/app:1"), img)
		c.pull(up.Ref("library/multi:1"), child)
		r.requireThroughCache(img, child)
	})
}

// A cache port serving HTTPS, as sites that refuse plain HTTP between nodes
// and the cache run it: the generated hosts.toml names an https mirror and
// the CA, and ctr and the CRI plugin both pull through it.
func TestTLSPullThroughCache(t *testing.T) {
	requireContainerd(t)
	up := ts.Profiles()[1].Start(t) // token + CDN
	img := up.Push(t, "library/app:1", 2, 128<<10)
	other := up.Push(t, "library/other:1", 2, 128<<10)
	cert := ts.WriteServerCert(t, t.TempDir())
	r := startRigTLS(t, up, ctrdcfg.V16, &cert)
	b, err := os.ReadFile(filepath.Join(r.hostsDir, up.Host, "hosts.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `[host."https://`) || !strings.Contains(string(b), cert.CAFile) {
		t.Fatalf("hosts.toml for a TLS port:\n%s", b)
	}
	r.d.pull(up.Ref("library/app:1"), r.hostsDir)
	r.cri().pull(up.Ref("library/other:1"), other)
	r.requireThroughCache(img, other)
}

// criClient talks to a containerd's CRI plugin as the kubelet does.
type criClient struct {
	t      *testing.T
	d      *daemon
	images cri.ImageServiceClient
}

// cri checks that the daemon's CRI plugin loaded with the rig's hosts
// directory and the native snapshotter, and dials it; the CRI plugin
// failing to load does not stop containerd, so only its log tells.
func (r *rig) cri() *criClient {
	t := r.t
	t.Helper()
	if l := r.d.logLine("failed to load plugin io.containerd.grpc.v1.cri"); l != "" {
		t.Fatalf("containerd did not load its CRI plugin, so no kubelet could pull: %s\n--- config.toml:\n%s", l, criConfig(r.hostsDir))
	}
	switch l := r.d.logLine("Start cri plugin with config"); {
	case l == "":
		t.Fatalf("containerd never started its CRI plugin:\n%s", r.d.logTail())
	case !strings.Contains(l, "Snapshotter:native") || !strings.Contains(l, "ConfigPath:"+r.hostsDir+" "):
		t.Fatalf("CRI plugin did not start with the native snapshotter and config_path %s: %.400s", r.hostsDir, l)
	}
	conn, err := grpc.NewClient("unix://"+r.d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := cri.NewRuntimeServiceClient(conn).Version(ctx, &cri.VersionRequest{})
	if err != nil {
		t.Fatalf("CRI runtime.v1 Version: %v\ncontainerd log:\n%s", err, r.d.logTail())
	}
	t.Logf("CRI: %s %s, API %s", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	return &criClient{t: t, d: r.d, images: cri.NewImageServiceClient(conn)}
}

// pull has the CRI plugin pull ref, which must resolve to img, and checks
// that ImageStatus and ListImages report it under ref with img's config
// digest as its ID.
func (c *criClient) pull(ref string, img v1.Image) {
	t := c.t
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.String()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	spec := &cri.ImageSpec{Image: ref}
	resp, err := c.images.PullImage(ctx, &cri.PullImageRequest{Image: spec})
	if err != nil {
		t.Fatalf("CRI PullImage %s: %v\ncontainerd log:\n%s", ref, err, c.d.logTail())
	}
	t.Logf("CRI pulled %s in %v", ref, time.Since(start).Round(time.Millisecond))
	if resp.ImageRef != id {
		t.Errorf("CRI pulled %s as %s; want the image with config %s", ref, resp.ImageRef, id)
	}

	st, err := c.images.ImageStatus(ctx, &cri.ImageStatusRequest{Image: spec})
	switch {
	case err != nil:
		t.Fatalf("CRI ImageStatus %s: %v", ref, err)
	case st.Image == nil:
		t.Errorf("CRI ImageStatus does not know %s after pulling it", ref)
	case st.Image.Id != id || !slices.Contains(st.Image.RepoTags, ref):
		t.Errorf("CRI ImageStatus %s: id %s, tags %q; want id %s tagged %s", ref, st.Image.Id, st.Image.RepoTags, id, ref)
	}

	list, err := c.images.ListImages(ctx, &cri.ListImagesRequest{})
	if err != nil {
		t.Fatalf("CRI ListImages: %v", err)
	}
	if !slices.ContainsFunc(list.Images, func(i *cri.Image) bool { return i.Id == id && slices.Contains(i.RepoTags, ref) }) {
		t.Errorf("CRI ListImages lacks %s (%s): %v", ref, id, list.Images)
	}
}
