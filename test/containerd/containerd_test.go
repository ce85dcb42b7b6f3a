package containerd

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/multiproxy/multiproxy/internal/config"
	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestPullThroughCacheThenFallBack: for each kind of upstream, ctr pulls a
// multi-layer image and the linux/amd64 child of a multi-arch index
// through multiproxy using the generated hosts.toml files, and every byte
// provably came through the cache (see requireThroughCache); once
// multiproxy is stopped, the next pull falls through to the upstream named
// as server, and the same counters see containerd there, which shows they
// would have caught it bypassing the cache. The files are generated for
// containerd 2.x, so they carry dial_timeout: the pulls show that 1.6
// ignores the key rather than the file.
func TestPullThroughCacheThenFallBack(t *testing.T) {
	requireContainerd(t)
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		img := up.Push(t, "library/alpha:1", 3, 256<<10)
		idx := up.PushIndex(t, "library/multi:1")
		later := up.Push(t, "library/alpha:2", 1, 128<<10)
		r := startRig(t, up, ctrdcfg.V2)

		r.d.pull(up.Ref("library/alpha:1"), r.hostsDir)
		r.d.pull(up.Ref("library/multi:1"), r.hostsDir)
		r.requireThroughCache(img, ts.IndexChild(t, idx, "amd64"))
		for _, d := range ts.BlobDigests(t, ts.IndexChild(t, idx, "arm64")) {
			if uas := r.blobGets(d); len(uas) != 0 {
				t.Errorf("blob %s of the arm64 child, which nobody pulled, was fetched by %q", d, uas)
			}
		}

		r.p.Stop()
		r.d.pull(up.Ref("library/alpha:2"), r.hostsDir)
		if direct(r.api) == 0 {
			t.Error("with the cache stopped the pull succeeded, but containerd never asked the registry: where did it come from?")
		}
		for _, d := range ts.LayerDigests(t, later) {
			if uas := r.blobGets(d); !slices.ContainsFunc(uas, fromContainerd) {
				t.Errorf("with the cache stopped, the blob host never saw containerd fetch layer %s (GETs by %q)", d, uas)
			}
		}
		out, err := r.d.ctr(10*time.Second, "images", "ls", "-q")
		if err != nil {
			t.Fatalf("ctr images ls: %v\n%s", err, out)
		}
		for _, ref := range []string{up.Ref("library/alpha:1"), up.Ref("library/multi:1"), up.Ref("library/alpha:2")} {
			if !strings.Contains(out, ref) {
				t.Errorf("containerd does not list %s:\n%s", ref, out)
			}
		}
	})
}

// rig is an upstream of one profile behind multiproxy, and a containerd
// (CRI plugin included) whose hosts.toml files send the upstream's pulls
// to multiproxy.
type rig struct {
	t  *testing.T
	up *ts.Upstream
	// api records what reached the registry holding the images: the API
	// host, or with a front, the front's target, which every manifest and
	// blob request through the front reaches by redirect. (containerd 1.6
	// sends no /v2/ ping, the only thing the front answers itself.)
	api      *ts.AgentLog
	p        *ts.Proxy
	hostsDir string
	d        *daemon
}

// startRig starts multiproxy for up, writes its hosts.toml files for
// containerd version v, and starts containerd with them as the CRI
// plugin's config_path.
func startRig(t *testing.T, up *ts.Upstream, v ctrdcfg.Version) *rig {
	t.Helper()
	return startRigTLS(t, up, v, nil)
}

// startRigTLS is startRig with the cache's port serving HTTPS with cert,
// and the hosts.toml naming cert's CA.
func startRigTLS(t *testing.T, up *ts.Upstream, v ctrdcfg.Version, cert *ts.ServerCert) *rig {
	t.Helper()
	r := &rig{t: t, up: up, api: &ts.AgentLog{}}
	up.Faults.Add(ts.Rule{Action: r.api.Observe})
	// The upstream is named after the host its image references carry (the
	// front's, with one), since that names the hosts.toml directory.
	cfg := ts.NewProxyConfig(t, up.ProxyUpstream(up.Host))
	ca := ""
	if cert != nil {
		cfg.Upstreams[0].TLS = config.TLS{CertFile: cert.CertFile, KeyFile: cert.KeyFile}
		ca = cert.CAFile
	}
	r.p = ts.StartProxyConfig(t, cfg)
	dir := shortDir(t)
	r.hostsDir = filepath.Join(dir, "certs.d")
	writeHosts(t, r.p, r.hostsDir, v, ca)
	r.d = startContainerd(t, dir, criConfig(r.hostsDir))
	return r
}

// requireThroughCache proves that containerd got images through
// multiproxy, not through its silent fallback to the server: the registry
// saw no request with containerd's User-Agent; the blob host (the CDN, or
// the registry itself) served each config and layer blob exactly once, to
// multiproxy; the CDN never served containerd nor saw an Authorization
// header; and multiproxy's metrics count at least the images' bytes as
// served.
func (r *rig) requireThroughCache(images ...v1.Image) {
	t := r.t
	t.Helper()
	if n := direct(r.api); n != 0 {
		t.Errorf("containerd sent %d requests straight to the registry while the cache was up", n)
	}
	for _, img := range images {
		for _, d := range ts.BlobDigests(t, img) {
			if uas := r.blobGets(d); len(uas) != 1 || !strings.HasPrefix(uas[0], "multiproxy/") {
				t.Errorf("blob %s was fetched from the blob host by %q; want exactly one GET, by multiproxy", d, uas)
			}
		}
	}
	if c := r.up.CDN; c != nil {
		for _, req := range c.Requests() {
			if fromContainerd(req.UserAgent) {
				t.Errorf("the CDN served containerd itself: %s %s", req.Method, req.Path)
			}
		}
		if n := c.AuthorizationSeen(); n != 0 {
			t.Errorf("the CDN saw %d requests carrying Authorization", n)
		}
	}
	requireServedByCache(t, r.p, r.up.Host, images...)
}

// blobGets lists the User-Agents of the GETs of blob digest at the
// upstream's blob host.
func (r *rig) blobGets(digest string) []string {
	if r.up.CDN == nil {
		return r.api.Gets("/blobs/" + digest)
	}
	var uas []string
	for _, req := range r.up.CDN.Requests() {
		if req.Method == http.MethodGet && req.Digest == digest {
			uas = append(uas, req.UserAgent)
		}
	}
	return uas
}

// writeHosts writes the hosts.toml set for p's upstreams at the ports they
// are bound to, as `multiproxy containerd hosts --address 127.0.0.1
// --containerd-version` would for a config with those listen addresses.
func writeHosts(t *testing.T, p *ts.Proxy, dir string, v ctrdcfg.Version, caFile string) {
	t.Helper()
	ups := make([]config.Upstream, len(p.Config.Upstreams))
	copy(ups, p.Config.Upstreams)
	for i := range ups {
		ups[i].Listen = p.Addr(ups[i].Name)
	}
	files, err := ctrdcfg.GenerateHosts(ups, ctrdcfg.HostsOptions{Address: "127.0.0.1", Version: v, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if v == ctrdcfg.V2 && !strings.Contains(string(f.Content), "dial_timeout") {
			t.Fatalf("the 2.x file lacks dial_timeout:\n%s", f.Content)
		}
	}
	if _, err := ctrdcfg.WriteHosts(dir, files, ctrdcfg.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// requireServedByCache checks, from multiproxy's metrics, that the bytes
// of images, pulled from one upstream, reached containerd through the
// cache.
func requireServedByCache(t *testing.T, p *ts.Proxy, upstream string, images ...v1.Image) {
	t.Helper()
	var want int64
	for _, img := range images {
		want += ts.ImageBytes(t, img)
	}
	if got := servedBytes(t, p.AdminURL(), upstream); got < float64(want) {
		t.Errorf("multiproxy served %v bytes for upstream %s; containerd needed %d for the images", got, upstream, want)
	}
}

// TestRejectedConfigIsFlaggedAndFixed starts containerd with config_path
// and mirrors together, takes its real complaint from its log, and checks
// that `containerd check` reports that same file as an error in the same
// words. Then the --fix output goes to a second containerd, whose CRI
// plugin must load with the config_path.
func TestRejectedConfigIsFlaggedAndFixed(t *testing.T) {
	requireContainerd(t)
	ctx := context.Background()
	dir := shortDir(t)
	hostsDir := filepath.Join(dir, "certs.d")
	if err := os.MkdirAll(hostsDir, 0o755); err != nil {
		t.Fatal(err)
	}

	bad := startContainerd(t, dir, fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q

  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["http://127.0.0.1:5000"]
`, hostsDir))
	line := bad.logLine("failed to load plugin io.containerd.grpc.v1.cri")
	if line == "" {
		t.Fatalf("containerd loaded its CRI plugin with mirrors and config_path together; log:\n%s", bad.logTail())
	}
	m := regexp.MustCompile(`error=("(?:[^"\\]|\\.)*")`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no error= in %q", line)
	}
	complaint, err := strconv.Unquote(m[1])
	if err != nil {
		t.Fatalf("unquote %s: %v", m[1], err)
	}
	t.Logf("containerd: %s", line)
	bad.stop()

	report, err := ctrdcfg.Check(ctx, bad.cfg, ctrdcfg.CheckOptions{Version: ctrdcfg.V16})
	if err != nil {
		t.Fatal(err)
	}
	var flagged *ctrdcfg.Finding
	for i, f := range report.Findings {
		if f.Code == ctrdcfg.CodeMirrorsWithPath {
			flagged = &report.Findings[i]
		}
	}
	switch {
	case flagged == nil:
		t.Fatalf("check did not flag the file containerd rejected (%q): %+v", complaint, report.Findings)
	case flagged.Severity != ctrdcfg.Error || flagged.File != bad.cfg:
		t.Errorf("finding %+v, want an error about %s", flagged, bad.cfg)
	case !strings.Contains(flagged.Message, complaint):
		t.Errorf("finding says %q; containerd said %q", flagged.Message, complaint)
	case !strings.Contains(flagged.Text, `registry.mirrors."docker.io"`):
		t.Errorf("finding quotes line %d %q, want the mirrors table", flagged.Line, flagged.Text)
	}

	data, err := os.ReadFile(bad.cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ctrdcfg.Fix(data, ctrdcfg.FixOptions{Hosts: ctrdcfg.HostsOptions{Version: ctrdcfg.V16}})
	if err != nil {
		t.Fatalf("fix: %v", err)
	}
	if _, err := ctrdcfg.WriteHosts(res.CertsDir, res.Hosts, ctrdcfg.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	// As `check --fix --write` would: the fixed file replaces the old one,
	// and containerd starts again on the same root, state and socket.
	fixed := newDaemon(t, dir, "containerd-fixed.log")
	fixed.start(string(res.Config))
	if l := fixed.logLine("failed to load plugin io.containerd.grpc.v1.cri"); l != "" {
		t.Fatalf("containerd still rejects the fixed config: %s\n--- fixed config.toml:\n%s", l, res.Config)
	}
	if l := fixed.logLine("Start cri plugin with config"); !strings.Contains(l, "ConfigPath:"+hostsDir+" Mirrors:map[]") {
		t.Errorf("CRI plugin did not start with config_path %s and no mirrors: %.300s", hostsDir, l)
	}
	after, err := ctrdcfg.Check(ctx, fixed.cfg, ctrdcfg.CheckOptions{Version: ctrdcfg.V16})
	if err != nil {
		t.Fatal(err)
	}
	if n := after.Count(ctrdcfg.Error); n > 0 {
		t.Errorf("check still finds %d errors in the fixed config: %+v", n, after.Findings)
	}
}
