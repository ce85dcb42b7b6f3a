package disk

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/multiproxy/multiproxy/internal/config"
	dsk "github.com/multiproxy/multiproxy/internal/disk"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// The disk every test gets, and the watermark it configures on it.
const (
	tmpfsSize = 64 << 20
	watermark = 4 << 20
)

func TestMain(m *testing.M) {
	// TestKillAfterLastByteNeverLeavesATornBlob kills -9 this binary
	// started as a multiproxy server.
	ts.RunChildIfAsked()
	os.Exit(m.Run())
}

// mountTmpfs mounts a fresh tmpfs of tmpfsSize bytes and unmounts it when
// the test ends (after everything registered later, such as the proxy,
// has stopped).
func mountTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test/disk mounts a 64 MiB tmpfs to fill a real filesystem, which needs root (CI runs as root); skipping as non-root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", tmpfsSize), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		// A fill goroutine of a stopped proxy may still be closing its
		// spool file: retry, then detach lazily rather than leak a mount.
		for range 50 {
			if err := exec.Command("umount", dir).Run(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// image is what a test pushed upstream.
type image struct {
	repo, tag string
	digest    string   // the manifest's
	config    string   // the config blob's digest
	layers    []string // layer blob digests, in manifest order
}

// blobs is every blob the image's manifest names.
func (im image) blobs() []string { return append([]string{im.config}, im.layers...) }

// pushImage pushes an OCI image whose layers are uncompressed tars holding
// one file of random bytes each, of the given sizes (the blob is a little
// larger: a tar header and padding). It is testsupport.PushImage without
// gzip, which under the race detector costs about 0.2 s per MiB: these
// tests push hundreds of MiB, and the cache only cares about digests.
func pushImage(t testing.TB, r *ts.Registry, repoTag string, sizes ...int64) image {
	t.Helper()
	im, err := tryPushImage(r, repoTag, sizes...)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func tryPushImage(r *ts.Registry, repoTag string, sizes ...int64) (image, error) {
	repo, tag, _ := strings.Cut(repoTag, ":")
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, size := range sizes {
		b, err := randomTar(size)
		if err != nil {
			return image{}, err
		}
		img, err = mutate.AppendLayers(img, static.NewLayer(b, types.OCIUncompressedLayer))
		if err != nil {
			return image{}, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return image{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Labels = map[string]string{"nonce": rand.Text()} // distinct configs
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return image{}, err
	}
	ref, err := name.ParseReference(r.Ref(repoTag), name.StrictValidation)
	if err != nil {
		return image{}, err
	}
	if err := remote.Write(ref, img, r.RemoteOptions()...); err != nil {
		return image{}, fmt.Errorf("push %s: %w", repoTag, err)
	}
	im := image{repo: repo, tag: tag}
	m, err := img.Manifest()
	if err != nil {
		return image{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return image{}, err
	}
	im.digest, im.config = d.String(), m.Config.Digest.String()
	for _, l := range m.Layers {
		im.layers = append(im.layers, l.Digest.String())
	}
	return im, nil
}

func randomTar(size int64) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(int(size) + 3*512)
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "random", Size: size, Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// startProxy starts multiproxy in-process with one upstream, docker.io,
// storing under storage with the test watermark. Eviction runs only when a
// fill needs room (the scheduled GC is weekly).
func startProxy(t *testing.T, up *ts.Registry, storage string, tweak func(*config.Config)) *ts.Proxy {
	t.Helper()
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up, Tweak: func(u *config.Upstream) {
		u.Storage.Path = storage
		u.Disk.MinFree = config.MinFree{Bytes: watermark}
		// Generous: eviction for space is waited for up to the upstream
		// timeout, and the race detector slows both down.
		u.Timeout = 10 * time.Second
	}})
	if tweak != nil {
		tweak(&cfg)
	}
	return ts.StartProxyConfig(t, cfg)
}

func uncached(t *testing.T, p *ts.Proxy, reason string) float64 {
	t.Helper()
	return p.Metric(t, "multiproxy_fill_uncached_total", map[string]string{"upstream": "docker.io", "reason": reason})
}

// freeSampler records the lowest free space (as the cache sees it: statfs
// f_bavail) of a filesystem while it runs.
type freeSampler struct {
	dir     string
	stop    chan struct{}
	done    chan struct{}
	min     atomic.Int64
	samples atomic.Int64
	err     error
}

func sampleFree(t *testing.T, dir string) *freeSampler {
	t.Helper()
	s := &freeSampler{dir: dir, stop: make(chan struct{}), done: make(chan struct{})}
	u, err := dsk.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.min.Store(u.Free)
	go func() {
		defer close(s.done)
		for {
			u, err := dsk.Statfs(dir)
			if err != nil {
				s.err = err
				return
			}
			if u.Free < s.min.Load() {
				s.min.Store(u.Free)
			}
			s.samples.Add(1)
			select {
			case <-s.stop:
				return
			default:
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

// Stop ends sampling and returns the lowest free bytes seen.
func (s *freeSampler) Stop() int64 {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.min.Load()
}

// checkWatermark fails the test if free space went below the watermark.
func (s *freeSampler) checkWatermark(t *testing.T) {
	t.Helper()
	lowest := s.Stop()
	if s.err != nil {
		t.Fatalf("statfs %s: %v", s.dir, s.err)
	}
	t.Logf("lowest free space %d bytes (%.2f MiB) over %d samples; watermark %d", lowest, float64(lowest)/(1<<20), s.samples.Load(), watermark)
	if lowest < watermark {
		t.Errorf("free space fell to %d bytes, %d below the %d-byte watermark (disk.min_free)", lowest, watermark-lowest, watermark)
	}
}

// blobPath is where the store keeps a blob's bytes.
func blobPath(storage, d string) string {
	hexd := strings.TrimPrefix(d, "sha256:")
	return filepath.Join(storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")
}

func blobStored(storage, d string) bool {
	_, err := os.Stat(blobPath(storage, d))
	return err == nil
}

// manifestStored reports whether the image's manifest is still stored
// under its repository (eviction removes the revision link).
func manifestStored(storage string, im image) bool {
	hexd := strings.TrimPrefix(im.digest, "sha256:")
	_, err := os.Stat(filepath.Join(storage, "docker/registry/v2/repositories", im.repo, "_manifests/revisions/sha256", hexd, "link"))
	return err == nil
}

// spoolFiles lists the fills being written (or left behind) in the store.
func spoolFiles(storage string) []string {
	es, _ := os.ReadDir(filepath.Join(storage, "_spool"))
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// storedBlobs lists the digests of every blob in the store.
func storedBlobs(storage string) []string {
	var out []string
	matches, _ := filepath.Glob(filepath.Join(storage, "docker/registry/v2/blobs/sha256/*/*/data"))
	for _, m := range matches {
		out = append(out, "sha256:"+filepath.Base(filepath.Dir(m)))
	}
	return out
}

// hashFile is the sha256 digest of a file's content.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// settle waits until no fill is running: clients get their last byte
// before the fsync and rename, so the store changes a little after a pull
// returns. With no fill running the spool must be empty too: a file left
// there is disk space nothing will ever free.
func settle(t *testing.T, p *ts.Proxy, storage string) {
	t.Helper()
	p.Settle(t)
	ts.WaitFor(t, 10*time.Second, "no spool file left once fills are done", func() bool { return len(spoolFiles(storage)) == 0 })
}

// fetchBlob GETs a blob and checks the body against its digest.
func fetchBlob(c *http.Client, base, repo, d string) error {
	resp, err := c.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("blob %s: status %d: %s", d, resp.StatusCode, b)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return fmt.Errorf("blob %s: body hashes to %s", d, got)
	}
	return nil
}

// progress counts bytes a client has read.
type progress struct {
	r io.Reader
	n atomic.Int64
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n.Add(int64(n))
	return n, err
}

// slowPull is one client GET of a blob running in the background.
type slowPull struct {
	read   progress
	done   chan struct{}
	err    error
	cancel context.CancelFunc // the client gives up
}

// startPull GETs a blob in the background, hashing the body.
func startPull(c *http.Client, base, repo, d string) *slowPull {
	return startGatedPull(c, base, repo, d, 0, nil)
}

// startGatedPull is startPull for a client that, when goOn is not nil,
// reads the first first bytes, then nothing until goOn is closed.
func startGatedPull(c *http.Client, base, repo, d string, first int64, goOn <-chan struct{}) *slowPull {
	ctx, cancel := context.WithCancel(context.Background())
	s := &slowPull{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+repo+"/blobs/"+d, nil)
		if err != nil {
			s.err = err
			return
		}
		resp, err := c.Do(req)
		if err != nil {
			s.err = err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			s.err = fmt.Errorf("status %d", resp.StatusCode)
			return
		}
		s.read.r = resp.Body
		h := sha256.New()
		if goOn != nil {
			if _, err := io.CopyN(h, &s.read, first); err != nil {
				s.err = err
				return
			}
			<-goOn
		}
		if _, err := io.Copy(h, &s.read); err != nil {
			s.err = err
			return
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
			s.err = fmt.Errorf("body hashes to %s, want %s", got, d)
		}
	}()
	return s
}

func (s *slowPull) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-s.done:
		return s.err
	case <-time.After(d):
		t.Fatalf("client pull still running after %v", d)
		return nil
	}
}

// upstreamCalls watches the upstream requests an Action handles: how many
// ended (the handler returned: answered, or its connection dropped) and
// how many body bytes they sent.
type upstreamCalls struct {
	ended atomic.Int64
	sent  atomic.Int64
}

// wrap runs action with the request's end and body bytes recorded.
func (u *upstreamCalls) wrap(action ts.Action) ts.Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		defer u.ended.Add(1) // also when the action aborts the connection (panic)
		action(&countingWriter{ResponseWriter: w, n: &u.sent}, r, next)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

var errNotOK = errors.New("not 200")

// getManifest GETs a manifest and returns its status and digest header,
// checking the header against the body.
func getManifest(c *http.Client, base, repo, ref string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Accept", string(types.OCIManifestSchema1))
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, "", fmt.Errorf("%w: %s", errNotOK, body)
	}
	sum := sha256.Sum256(body)
	d := resp.Header.Get("Docker-Content-Digest")
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d {
		return resp.StatusCode, d, fmt.Errorf("manifest body hashes to %s, header says %s", got, d)
	}
	return resp.StatusCode, d, nil
}
