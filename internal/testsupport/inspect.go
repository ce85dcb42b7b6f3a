package testsupport

import (
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BlobDigests lists img's config and layer digests: every blob a pull of
// img downloads.
func BlobDigests(t testing.TB, img v1.Image) []string {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{cfg.String()}, LayerDigests(t, img)...)
}

// ImageBytes is what a pull of img downloads: manifest, config and every
// compressed layer.
func ImageBytes(t testing.TB, img v1.Image) int64 {
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

// IndexChild is idx's linux/arch image, as a client on that platform pulls.
func IndexChild(t testing.TB, idx v1.ImageIndex, arch string) v1.Image {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range im.Manifests {
		if p := desc.Platform; p != nil && p.OS == "linux" && p.Architecture == arch {
			img, err := idx.Image(desc.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("the index has no linux/%s image", arch)
	return nil
}

// AgentLog records the requests reaching a registry with their
// User-Agent, so an end-to-end test can tell a client's own requests (a
// fallback past the cache) from multiproxy's. Install Observe as a Rule's
// Action, or Wrap as a RegistryOptions.Wrap.
type AgentLog struct {
	mu   sync.Mutex
	reqs []AgentRequest
}

// AgentRequest is one request an AgentLog saw.
type AgentRequest struct{ Method, Path, UserAgent string }

// Observe records the request and passes it on.
func (a *AgentLog) Observe(w http.ResponseWriter, r *http.Request, next http.Handler) {
	a.mu.Lock()
	a.reqs = append(a.reqs, AgentRequest{r.Method, r.URL.Path, r.UserAgent()})
	a.mu.Unlock()
	next.ServeHTTP(w, r)
}

// Wrap is Observe as a RegistryOptions.Wrap.
func (a *AgentLog) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.Observe(w, r, h) })
}

// Reset forgets what was recorded, such as the test's own pushes.
func (a *AgentLog) Reset() {
	a.mu.Lock()
	a.reqs = nil
	a.mu.Unlock()
}

// Requests lists what was recorded, in arrival order.
func (a *AgentLog) Requests() []AgentRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]AgentRequest(nil), a.reqs...)
}

// Gets lists the User-Agents of the GETs of paths containing s.
func (a *AgentLog) Gets(s string) []string {
	var uas []string
	for _, r := range a.Requests() {
		if r.Method == http.MethodGet && strings.Contains(r.Path, s) {
			uas = append(uas, r.UserAgent)
		}
	}
	return uas
}

// DirsUnder lists the directories under root, root itself as ".", relative
// to it; none when root does not exist. Tests of what a request must never
// create compare it before and after.
func DirsUnder(t testing.TB, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && path == root {
				return nil
			}
			return err
		}
		if d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testsupport: list directories under %s: %v", root, err)
	}
	return dirs
}
