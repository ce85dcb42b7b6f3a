package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/multiproxy/multiproxy/internal/config"
	ctrdcfg "github.com/multiproxy/multiproxy/internal/containerd"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// TestPullThroughCacheThenFallBack: containerd pulls images of two
// upstreams through multiproxy using the generated hosts.toml files, never
// contacting the registries itself; once multiproxy is stopped, the next
// pull falls through to the registry named as server.
func TestPullThroughCacheThenFallBack(t *testing.T) {
	requireContainerd(t)
	start := time.Now()

	var direct directPulls
	regA := ts.StartRegistry(t, ts.RegistryOptions{Wrap: direct.wrap})
	regB := ts.StartRegistry(t, ts.RegistryOptions{Wrap: direct.wrap})
	imgA := ts.PushImage(t, regA, "library/alpha:1", 2, 256<<10)
	ts.PushImage(t, regA, "library/alpha:2", 1, 128<<10)
	imgB := ts.PushImage(t, regB, "team/beta:1", 2, 192<<10)

	// Each upstream is named after its registry's host:port, since that is
	// what the image references (and so the hosts.toml directories) say.
	p := ts.StartProxy(t,
		ts.ProxyUpstream{Name: regA.Host(), Reg: regA},
		ts.ProxyUpstream{Name: regB.Host(), Reg: regB},
	)

	dir := shortDir(t)
	hostsDir := filepath.Join(dir, "certs.d")
	writeHosts(t, p, hostsDir)
	d := startContainerd(t, dir, fmt.Sprintf("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n", hostsDir))

	d.pull(regA.Ref("library/alpha:1"), hostsDir)
	d.pull(regB.Ref("team/beta:1"), hostsDir)

	if n := direct.n.Load(); n != 0 {
		t.Errorf("containerd sent %d requests straight to the registries while the cache was up", n)
	}
	requireServedByCache(t, p, pulled{regA, imgA}, pulled{regB, imgB})

	p.Stop()
	d.pull(regA.Ref("library/alpha:2"), hostsDir)
	if direct.n.Load() == 0 {
		t.Error("with the cache stopped the pull succeeded, but containerd never asked the registry: where did it come from?")
	}
	out, err := d.ctr(10*time.Second, "images", "ls", "-q")
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, ref := range []string{regA.Ref("library/alpha:1"), regB.Ref("team/beta:1"), regA.Ref("library/alpha:2")} {
		if !strings.Contains(out, ref) {
			t.Errorf("containerd does not list %s:\n%s", ref, out)
		}
	}
	t.Logf("end to end in %v", time.Since(start).Round(time.Millisecond))
}

// writeHosts writes the hosts.toml set for p's upstreams at the ports they
// are bound to, as `multiproxy containerd hosts --address 127.0.0.1` would
// for a config with those listen addresses. The second upstream's file is
// generated for containerd 2.x, so it carries dial_timeout: the pull through
// it shows that 1.6 ignores the key rather than the file.
func writeHosts(t *testing.T, p *ts.Proxy, dir string) {
	t.Helper()
	ups := make([]config.Upstream, len(p.Config.Upstreams))
	copy(ups, p.Config.Upstreams)
	for i := range ups {
		ups[i].Listen = p.Addr(ups[i].Name)
	}
	var files []ctrdcfg.HostsFile
	for i, v := range []ctrdcfg.Version{ctrdcfg.V16, ctrdcfg.V2} {
		f, err := ctrdcfg.GenerateHosts(ups[i:i+1], ctrdcfg.HostsOptions{Address: "127.0.0.1", Version: v})
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f...)
	}
	if !strings.Contains(string(files[1].Content), "dial_timeout") {
		t.Fatalf("the 2.x file lacks dial_timeout:\n%s", files[1].Content)
	}
	if _, err := ctrdcfg.WriteHosts(dir, files, ctrdcfg.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// pulled is an image containerd pulled from a registry through the cache.
type pulled struct {
	reg *ts.Registry
	img v1.Image
}

// requireServedByCache checks, from multiproxy's metrics, that each image's
// bytes reached containerd through the cache.
func requireServedByCache(t *testing.T, p *ts.Proxy, images ...pulled) {
	t.Helper()
	for _, c := range images {
		if got, want := servedBytes(t, p.AdminURL(), c.reg.Host()), imageBytes(t, c.img); got < float64(want) {
			t.Errorf("multiproxy served %v bytes for upstream %s; containerd needed %d for the image", got, c.reg.Host(), want)
		}
	}
}

// imageBytes is what a pull of img must download: manifest, config and
// every (compressed) layer.
func imageBytes(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	c, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	total := int64(len(m) + len(c))
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	return total
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
