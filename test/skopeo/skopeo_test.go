package skopeo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/containers"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// requireSkopeo skips the test when Debian's skopeo package is not
// installed. It is the only reason to skip: CI installs it.
func requireSkopeo(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo is not installed: this end-to-end test drives Debian's skopeo package (run ci/install-skopeo.sh, or apt-get install -y skopeo)")
	}
}

// client is skopeo with a HOME, base registries.conf, policy and
// credential locations of the test's own.
type client struct {
	t                  *testing.T
	dir, home, runtime string
	conf, policy       string
	// dropIn is where the generated file goes: the user's drop-in
	// directory, which containers/image reads as it reads
	// /etc/containers/registries.conf.d.
	dropIn string
	// certDir, when set, holds ca.crt for a cache port that serves HTTPS.
	certDir string
}

func newClient(t *testing.T) *client {
	t.Helper()
	dir := t.TempDir()
	c := &client{
		t:       t,
		dir:     dir,
		home:    filepath.Join(dir, "home"),
		runtime: filepath.Join(dir, "run"),
		conf:    filepath.Join(dir, "registries.conf"),
		policy:  filepath.Join(dir, "policy.json"),
	}
	c.dropIn = filepath.Join(c.home, ".config", "containers", "registries.conf.d", "50-multiproxy.conf")
	for _, d := range []string{c.home, c.runtime} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// An empty base file: no search registries, no mirrors, nothing but
	// the drop-in.
	if err := os.WriteFile(c.conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.policy, []byte(`{"default": [{"type": "insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// writeDropIn generates the drop-in for ups as `multiproxy containers
// registries-conf` does and writes it where skopeo reads drop-ins.
func (c *client) writeDropIn(ups []config.Upstream, opts containers.Options) string {
	c.t.Helper()
	content, err := containers.Generate(ups, opts)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := containers.WriteFile(c.dropIn, content, containers.WriteOptions{}); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("%s:\n%s", c.dropIn, content)
	return string(content)
}

// copy runs skopeo copy docker://ref dir:DEST and returns DEST. With
// platform "os/arch" it picks that image out of an index.
func (c *client) copy(t *testing.T, ref, platform string) string {
	t.Helper()
	dest, err := os.MkdirTemp(c.dir, "copy-")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--debug", "--registries-conf", c.conf, "--policy", c.policy}
	if os, arch, ok := strings.Cut(platform, "/"); ok {
		args = append(args, "--override-os", os, "--override-arch", arch)
	}
	args = append(args, "copy")
	if c.certDir != "" {
		// The CA that signed the cache's certificate, as a node keeps it
		// in /etc/containers/certs.d/HOST:PORT/ca.crt.
		args = append(args, "--src-cert-dir", c.certDir)
	}
	args = append(args, "docker://"+ref, "dir:"+dest)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "skopeo", args...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.home,
		"XDG_RUNTIME_DIR=" + c.runtime,
		"XDG_CONFIG_HOME=" + filepath.Join(c.home, ".config"),
		"TMPDIR=" + c.dir,
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// containers/image says which source it tried, in order: the
	// mirror first, then location.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "Trying to access") || strings.Contains(l, "Looking for TLS certificates") {
			t.Logf("skopeo: %s", l)
		}
	}
	return dest
}

// requireCopied checks that dir (skopeo's dir: layout) holds img byte for
// byte: manifest.json hashes to img's digest, and each config and layer
// blob, named by its hex digest, to its digest.
func requireCopied(t *testing.T, dir string, img v1.Image) {
	t.Helper()
	want := ts.Digest(t, img)
	if got := fileDigest(t, filepath.Join(dir, "manifest.json")); got != want {
		t.Errorf("%s/manifest.json is %s, want the image's %s", dir, got, want)
	}
	for _, d := range ts.BlobDigests(t, img) {
		_, hexDigest, _ := strings.Cut(d, ":")
		if got := fileDigest(t, filepath.Join(dir, hexDigest)); got != d {
			t.Errorf("blob %s was copied as %s", d, got)
		}
	}
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func fromMultiproxy(userAgent string) bool { return strings.HasPrefix(userAgent, "multiproxy/") }

// direct lists the requests to a registry that did not come from
// multiproxy.
func direct(a *ts.AgentLog) []ts.AgentRequest {
	var out []ts.AgentRequest
	for _, r := range a.Requests() {
		if !fromMultiproxy(r.UserAgent) {
			out = append(out, r)
		}
	}
	return out
}

// upstream is a started profile with its API log.
type upstream struct {
	*ts.Upstream
	api *ts.AgentLog
}

func startProfile(t *testing.T, p ts.Profile) *upstream {
	t.Helper()
	up := &upstream{Upstream: p.Start(t), api: &ts.AgentLog{}}
	up.Faults.Add(ts.Rule{Action: up.api.Observe})
	return up
}

func profile(t *testing.T, name string) ts.Profile {
	t.Helper()
	i := slices.IndexFunc(ts.Profiles(), func(p ts.Profile) bool { return p.Name == name })
	if i < 0 {
		t.Fatalf("no testsupport profile %q", name)
	}
	return ts.Profiles()[i]
}

// pushed forgets the requests of the test's pushes at the registry and
// the CDN, so that every request recorded from now on is a pull.
func (up *upstream) pushed() {
	up.api.Reset()
	if up.CDN != nil {
		up.CDN.ResetCounts()
	}
}

// blobGets lists the User-Agents of the GETs of blob digest at the
// upstream's blob host: the CDN, or the registry itself.
func (up *upstream) blobGets(digest string) []string {
	if up.CDN == nil {
		return up.api.Gets("/blobs/" + digest)
	}
	var uas []string
	for _, req := range up.CDN.Requests() {
		if req.Method == http.MethodGet && req.Digest == digest {
			uas = append(uas, req.UserAgent)
		}
	}
	return uas
}

// requireThroughCache proves that skopeo got images from up through
// multiproxy (serving it as upstream name), not by falling back to the
// registry: the registry saw no request but multiproxy's, the blob host
// served each blob exactly once, to multiproxy, and multiproxy counts at
// least the images' bytes as served.
func requireThroughCache(t *testing.T, p *ts.Proxy, name string, up *upstream, images ...v1.Image) {
	t.Helper()
	if d := direct(up.api); len(d) != 0 {
		t.Errorf("%d requests reached the registry from another client than multiproxy while the cache was up, first %+v", len(d), d[0])
	}
	var want int64
	for _, img := range images {
		for _, d := range ts.BlobDigests(t, img) {
			if uas := up.blobGets(d); len(uas) != 1 || !fromMultiproxy(uas[0]) {
				t.Errorf("blob %s was fetched from the blob host by %q; want exactly one GET, by multiproxy", d, uas)
			}
		}
		want += ts.ImageBytes(t, img)
	}
	if c := up.CDN; c != nil {
		for _, req := range c.Requests() {
			if !fromMultiproxy(req.UserAgent) {
				t.Errorf("the CDN served another client than multiproxy: %s %s by %q", req.Method, req.Path, req.UserAgent)
			}
		}
	}
	if got := ts.Metric(t, p.AdminURL(), "multiproxy_served_bytes_total", map[string]string{"upstream": name}); got < float64(want) {
		t.Errorf("multiproxy served %v bytes for upstream %s; the images take %d", got, name, want)
	}
}

// boundUpstreams is p's upstream table with each listen address replaced
// by the address it is bound to, as a config with fixed ports would say.
func boundUpstreams(p *ts.Proxy) []config.Upstream {
	ups := slices.Clone(p.Config.Upstreams)
	for i := range ups {
		ups[i].Listen = p.Addr(ups[i].Name)
	}
	return ups
}

// TestPerPort: one multiproxy serves an upstream of every profile, each on
// its own port and named after its host, as image references name it. The
// generated drop-in sends skopeo's pulls of an image from each, and of the
// linux/amd64 image of a multi-arch index, through the cache. Then the
// cache stops, and the next pull falls through to each registry, where the
// same logs see skopeo.
func TestPerPort(t *testing.T) {
	requireSkopeo(t)
	type side struct {
		up         *upstream
		img, later v1.Image
		idx        v1.ImageIndex
	}
	var sides []*side
	var pus []ts.ProxyUpstream
	for _, p := range ts.Profiles() {
		up := startProfile(t, p)
		s := &side{
			up:    up,
			img:   up.Push(t, "library/alpha:1", 3, 256<<10),
			idx:   up.PushIndex(t, "team/multi:1"),
			later: up.Push(t, "library/alpha:2", 1, 64<<10),
		}
		up.pushed()
		sides = append(sides, s)
		pus = append(pus, up.ProxyUpstream(up.Host))
	}
	p := ts.StartProxy(t, pus...)
	c := newClient(t)
	conf := c.writeDropIn(boundUpstreams(p), containers.Options{Address: "127.0.0.1"})
	for _, s := range sides {
		for _, want := range []string{
			"prefix = \"" + s.up.Host + "\"\nlocation = \"" + s.up.Host + "\"\ninsecure = true\n",
			"[[registry.mirror]]\nlocation = \"" + p.Addr(s.up.Host) + "\"\ninsecure = true\n",
		} {
			if !strings.Contains(conf, want) {
				t.Fatalf("the drop-in lacks %q", want)
			}
		}
	}

	for _, s := range sides {
		t.Run(s.up.Profile.Name, func(t *testing.T) {
			requireCopied(t, c.copy(t, s.up.Ref("library/alpha:1"), ""), s.img)
			amd64 := ts.IndexChild(t, s.idx, "amd64")
			requireCopied(t, c.copy(t, s.up.Ref("team/multi:1"), "linux/amd64"), amd64)
			requireThroughCache(t, p, s.up.Host, s.up, s.img, amd64)
			for _, d := range ts.BlobDigests(t, ts.IndexChild(t, s.idx, "arm64")) {
				if uas := s.up.blobGets(d); len(uas) != 0 {
					t.Errorf("blob %s of the arm64 image, which nobody pulled, was fetched by %q", d, uas)
				}
			}
		})
	}

	p.Stop()
	for _, s := range sides {
		if s.up.Front != nil {
			// containers/image does not get past the front's session-token
			// challenge on its own; what it does without the cache is not
			// this test's question.
			continue
		}
		t.Run(s.up.Profile.Name+"/cache stopped", func(t *testing.T) {
			requireCopied(t, c.copy(t, s.up.Ref("library/alpha:2"), ""), s.later)
			seen := direct(s.up.api)
			if len(seen) == 0 {
				t.Fatal("with the cache stopped the copy succeeded, but the registry saw no request from skopeo: where did it come from?")
			}
			if !strings.HasPrefix(seen[0].UserAgent, "skopeo/") {
				t.Errorf("the registry saw %q, not skopeo's User-Agent", seen[0].UserAgent)
			}
			for _, d := range ts.LayerDigests(t, s.later) {
				if uas := s.up.blobGets(d); !slices.ContainsFunc(uas, func(ua string) bool { return strings.HasPrefix(ua, "skopeo/") }) {
					t.Errorf("with the cache stopped, the blob host never saw skopeo fetch layer %s (GETs by %q)", d, uas)
				}
			}
		})
	}
}

// TestOnePortDockerHubNames: in one-port mode every mirror is the one port
// with the upstream's name as path, the prefix the port routes by when no
// ?ns= comes (containers/image sends none). The upstreams are named as
// the real registries they stand in for, docker.io and ghcr.io, with
// loopback remotes, which the drop-in keeps as their locations: so
// docker.io/library/alpha, and alpha alone (which containers/image
// normalizes to it), match the docker.io entry and go through the cache.
func TestOnePortDockerHubNames(t *testing.T) {
	requireSkopeo(t)
	hub := startProfile(t, profile(t, "plain"))
	ghcr := startProfile(t, profile(t, "token-cdn"))
	imgA := hub.Push(t, "library/alpha:1", 2, 128<<10)
	imgB := ghcr.Push(t, "team/beta:1", 2, 128<<10)
	hub.pushed()
	ghcr.pushed()

	cfg := ts.NewProxyConfig(t, hub.ProxyUpstream("docker.io"), ghcr.ProxyUpstream("ghcr.io"))
	cfg.ListenAll = "127.0.0.1:0"
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Listen = ""
	}
	p := ts.StartProxyConfig(t, cfg)
	port := p.Addr("docker.io")

	c := newClient(t)
	conf := c.writeDropIn(cfg.Upstreams, containers.Options{Address: "127.0.0.1", Endpoint: port})
	for _, want := range []string{
		"prefix = \"docker.io\"\nlocation = \"" + hub.Host + "\"\ninsecure = true\n",
		"location = \"" + port + "/docker.io\"\n",
		"prefix = \"ghcr.io\"\nlocation = \"" + ghcr.Host + "\"\ninsecure = true\n",
		"location = \"" + port + "/ghcr.io\"\n",
	} {
		if !strings.Contains(conf, want) {
			t.Fatalf("the drop-in lacks %q", want)
		}
	}

	requireCopied(t, c.copy(t, "docker.io/library/alpha:1", ""), imgA)
	requireCopied(t, c.copy(t, "alpha:1", ""), imgA)
	requireCopied(t, c.copy(t, "ghcr.io/team/beta:1", ""), imgB)
	requireThroughCache(t, p, "docker.io", hub, imgA)
	requireThroughCache(t, p, "ghcr.io", ghcr, imgB)
}

// TestTLS: a cache port serving HTTPS is written without insecure, and
// skopeo, trusting the cache's CA, pulls through it.
func TestTLS(t *testing.T) {
	requireSkopeo(t)
	up := startProfile(t, profile(t, "token-cdn"))
	img := up.Push(t, "library/alpha:1", 2, 128<<10)
	up.pushed()
	cert := ts.WriteServerCert(t, t.TempDir())
	cfg := ts.NewProxyConfig(t, up.ProxyUpstream(up.Host))
	cfg.Upstreams[0].TLS = config.TLS{CertFile: cert.CertFile, KeyFile: cert.KeyFile}
	p := ts.StartProxyConfig(t, cfg)
	c := newClient(t)
	// Only the CA, as on a node: containers/image takes any *.key there
	// for a client key pair.
	c.certDir = t.TempDir()
	ca, err := os.ReadFile(cert.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.certDir, "ca.crt"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := c.writeDropIn(boundUpstreams(p), containers.Options{Address: "127.0.0.1"})
	if want := "[[registry.mirror]]\nlocation = \"" + p.Addr(up.Host) + "\"\n"; !strings.Contains(conf, want) || strings.Contains(conf[strings.Index(conf, want):], "insecure = true\n\n") {
		t.Fatalf("the drop-in for a TLS port: want %q without insecure", want)
	}
	requireCopied(t, c.copy(t, up.Ref("library/alpha:1"), ""), img)
	requireThroughCache(t, p, up.Host, up, img)
}
