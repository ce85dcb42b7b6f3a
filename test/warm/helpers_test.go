package warm

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// watch sees every request a real upstream registry answers: how often
// each blob and manifest was fetched, and by which path. With budget set,
// it also answers like Docker Hub: every response carries the
// ratelimit-remaining left after the manifest GETs so far.
type watch struct {
	mu       sync.Mutex
	blobGETs map[string]int // digest -> GETs
	paths    []string       // "GET /v2/..." in order, but for /v2/ itself
	manifest int            // manifest GETs
	budget   int            // 0: no ratelimit header
}

func newWatch() *watch { return &watch{blobGETs: map[string]int{}} }

func (w *watch) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		// Manifests and blobs only: the health probe's GET /v2/ is no
		// fetch.
		if r.Method == http.MethodGet && r.URL.Path != "/v2/" {
			w.paths = append(w.paths, r.Method+" "+r.URL.Path)
			if i := strings.Index(r.URL.Path, "/blobs/"); i >= 0 && !strings.Contains(r.URL.Path, "/uploads/") {
				w.blobGETs[r.URL.Path[i+len("/blobs/"):]]++
			}
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.manifest++
			}
		}
		if w.budget > 0 {
			rw.Header().Set("Ratelimit-Limit", fmt.Sprintf("%d;w=21600", w.budget))
			rw.Header().Set("Ratelimit-Remaining", fmt.Sprintf("%d;w=21600", max(0, w.budget-w.manifest)))
		}
		w.mu.Unlock()
		next.ServeHTTP(rw, r)
	})
}

// reset forgets what was seen so far (the pushes of the test's setup).
func (w *watch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.blobGETs, w.paths, w.manifest = map[string]int{}, nil, 0
}

func (w *watch) blobs() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(w.blobGETs))
	for d, n := range w.blobGETs {
		out[d] = n
	}
	return out
}

func (w *watch) gets() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.paths...)
}

// warmNow runs a warm through the admin Client and returns its events.
func warmNow(t *testing.T, p *ts.Proxy, token string, req warm.Request) []warm.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var events []warm.Event
	c := admin.Client{Base: p.AdminURL(), Token: token}
	if err := c.Warm(ctx, req, func(e warm.Event) { events = append(events, e) }); err != nil {
		t.Fatalf("warm: %v (events so far: %+v)", err, events)
	}
	return events
}

// byKind groups events by their kind.
func byKind(events []warm.Event) map[string][]warm.Event {
	out := map[string][]warm.Event{}
	for _, e := range events {
		out[e.Event] = append(out[e.Event], e)
	}
	return out
}

// summary is the last event, which must be the summary.
func summary(t *testing.T, events []warm.Event) warm.Event {
	t.Helper()
	if len(events) == 0 || events[len(events)-1].Event != warm.EventSummary {
		t.Fatalf("the warm did not end with a summary: %+v", events)
	}
	return events[len(events)-1]
}

// pull fetches ref (on the proxy's port) as a client would and verifies
// every manifest and blob: an index with all its platforms.
func pull(p *ts.Proxy, t *testing.T, upstream, repoAndRef string, index bool) error {
	ref := p.Ref(t, upstream, repoAndRef)
	opts := ts.PullOptions()
	if index {
		idx, err := remote.Index(ref, opts...)
		if err != nil {
			return fmt.Errorf("pull %s: %w", repoAndRef, err)
		}
		if err := validate.Index(idx); err != nil {
			return fmt.Errorf("verify %s: %w", repoAndRef, err)
		}
		return nil
	}
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return fmt.Errorf("pull %s: %w", repoAndRef, err)
	}
	if err := validate.Image(img); err != nil {
		return fmt.Errorf("verify %s: %w", repoAndRef, err)
	}
	return nil
}

// pullPlatform pulls the image of one architecture from an index, as a
// node of that architecture does, and verifies it.
func pullPlatform(p *ts.Proxy, t *testing.T, upstream, repoAndRef, arch string) error {
	ref := p.Ref(t, upstream, repoAndRef)
	img, err := remote.Image(ref, append(ts.PullOptions(), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))...)
	if err != nil {
		return fmt.Errorf("pull %s for %s: %w", repoAndRef, arch, err)
	}
	if err := validate.Image(img); err != nil {
		return fmt.Errorf("verify %s for %s: %w", repoAndRef, arch, err)
	}
	return nil
}

// startWarmProxy starts multiproxy in front of reg with the admin token
// and the warm settings the end-to-end tests share.
func startWarmProxy(t *testing.T, reg *ts.Registry) *ts.Proxy {
	t.Helper()
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: name, Reg: reg})
	cfg.Admin.Token = config.Secret(token)
	cfg.Warm = config.Warm{Platforms: []string{"linux/amd64", "linux/arm64"}, MinRemaining: 10, Concurrency: 4}
	return ts.StartProxyConfig(t, cfg)
}

// pullWhile starts clients that each pull the whole set through p, in an
// order of their own; the returned func waits for them and fails the test
// with every pull that failed.
func pullWhile(t *testing.T, p *ts.Proxy, set []image, clients int) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, clients*len(set))
	for c := range clients {
		order := rand.Perm(len(set))
		wg.Go(func() {
			for _, i := range order {
				if err := pull(p, t, name, set[i].repo, set[i].index); err != nil {
					errs <- fmt.Errorf("client %d: %w", c, err)
				}
			}
		})
	}
	return func() {
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}
