package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// breakStore makes a store unwritable, even to root, by replacing its
// directory with a regular file (root ignores permission bits, not
// ENOTDIR). The cache cannot recreate it as it would a deleted directory.
func breakStore(t *testing.T, dir string) {
	t.Helper()
	// Moved aside rather than removed: a commit may still be writing in it.
	if err := os.Rename(dir, dir+".broken"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// leaks says which internals a client-facing text carries, if any.
func leaks(text string, paths ...string) string {
	for _, p := range paths {
		if p != "" && strings.Contains(text, p) {
			return "the path " + p
		}
	}
	for _, s := range []string{"/docker/registry/v2", "no such file", "not a directory", "read-only file system",
		"permission denied", "Path not found", "open ", "mkdir ", "rename "} {
		if strings.Contains(text, s) {
			return fmt.Sprintf("%q", s)
		}
	}
	return ""
}

// An upstream whose store cannot be written is "degraded" on /readyz (which
// then answers 503), /api/v1/status, the status page and
// multiproxy_upstream_state, with a reason that names the failing
// operation and never a path or an error's text; it recovers once writes
// work again.
//
// The store is made unwritable by replacing its directory with a regular
// file: root ignores permission bits, but not ENOTDIR. The cache records
// the failure (cache.StorageProblem) when it cannot create a spool file or
// commit a fill.
func TestUnwritableStoreDegradesReadiness(t *testing.T) {
	hub := ts.StartRegistry(t, ts.RegistryOptions{})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, hub, "library/app:1", 2, 64<<10)
	ts.PushImage(t, hub, "library/app:2", 2, 64<<10)
	ts.PushImage(t, ghcr, "team/tool:v1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: hub}, ts.ProxyUpstream{Name: "ghcr.io", Reg: ghcr})
	storage := p.Config.Upstreams[0].Storage.Path

	// The first probes, sent at start, say both upstreams answer.
	ts.WaitUntil(t, 10*time.Second, "both upstreams reachable", func() (bool, string) {
		r := getReadyz(t, p)
		return r.code == http.StatusOK && r.state("docker.io") == "reachable" && r.state("ghcr.io") == "reachable",
			fmt.Sprintf("%d %s", r.code, r.raw)
	})

	breakStore(t, storage)
	broken := time.Now()

	// A cold pull: the disk must not fail it (the blob passes through
	// unstored), and the failed writes show.
	accept := strings.Join(upstream.ManifestAccept, ", ")
	manifestCode, manifest := get(t, p.URL("docker.io")+"/v2/library/app/manifests/1", accept)
	if manifestCode != http.StatusOK {
		t.Errorf("manifest with an unwritable store: %d %s", manifestCode, manifest)
	}
	if manifestCode == http.StatusOK {
		var m struct {
			Layers []struct {
				Digest string `json:"digest"`
			} `json:"layers"`
		}
		if err := jsonUnmarshal(manifest, &m); err != nil || len(m.Layers) == 0 {
			t.Fatalf("manifest %q: %v", manifest, err)
		}
		d := m.Layers[0].Digest
		blobCode, blob := get(t, p.URL("docker.io")+"/v2/library/app/blobs/"+d, "")
		sum := sha256.Sum256(blob)
		if got := "sha256:" + hex.EncodeToString(sum[:]); blobCode != http.StatusOK || got != d {
			t.Errorf("uncached blob with an unwritable store: %d, bytes of %s; want 200 with %s: the disk must never fail a pull", blobCode, got, d)
		}
	}

	var (
		r        readyz
		degraded readyzUpstream
	)
	ts.WaitUntil(t, 2*probeInterval+time.Second, "docker.io degraded on /readyz", func() (bool, string) {
		r = getReadyz(t, p)
		degraded = r.upstream("docker.io")
		return r.code == http.StatusServiceUnavailable && degraded.State == "degraded", fmt.Sprintf("%d %s", r.code, r.raw)
	})
	if !strings.HasPrefix(degraded.Reason, "storage: ") || !strings.Contains(degraded.Reason, " failing since ") {
		t.Errorf("degraded reason %q, want \"storage: <op> failing since <time>\"", degraded.Reason)
	}
	if degraded.Since.Before(broken.Add(-time.Second)) {
		t.Errorf("degraded since %v, before the store broke at %v", degraded.Since, broken)
	}
	if l := leaks(r.raw, storage, p.Config.DataDir); l != "" {
		t.Errorf("/readyz carries %s: %s", l, r.raw)
	}
	// The other upstream is not affected.
	if s := r.state("ghcr.io"); s != "reachable" {
		t.Errorf("ghcr.io is %s while docker.io's store is broken", s)
	}
	fetch(t, p.URL("ghcr.io")+"/v2/team/tool/manifests/v1", accept)

	// The status API and page say the same.
	st := status(t, p)
	if st.Ready {
		t.Error("/api/v1/status says ready with a degraded upstream")
	}
	us := upstreamStatus(t, st, "docker.io")
	if us.State != "degraded" || us.Reason != degraded.Reason {
		t.Errorf("/api/v1/status: %s %q, want degraded %q", us.State, us.Reason, degraded.Reason)
	}
	_, page := get(t, p.AdminURL()+"/", "")
	if !strings.Contains(string(page), `<span class="state degraded">degraded</span>`) || !strings.Contains(string(page), degraded.Reason) {
		t.Errorf("the status page does not show docker.io degraded with its reason")
	}
	if l := leaks(string(page), storage, p.Config.DataDir); l != "" {
		t.Errorf("the status page carries %s", l)
	}

	// And the metrics.
	fams := ts.Scrape(t, p.AdminURL())
	if v, ok := fams.Value("multiproxy_upstream_state", map[string]string{"upstream": "docker.io", "state": "degraded"}); !ok || v != 1 {
		t.Errorf("upstream_state{docker.io,degraded} = %v (present %v), want 1", v, ok)
	}
	if v, ok := fams.Value("multiproxy_upstream_state", map[string]string{"upstream": "ghcr.io", "state": "degraded"}); !ok || v != 0 {
		t.Errorf("upstream_state{ghcr.io,degraded} = %v (present %v), want 0", v, ok)
	}
	var errs float64
	for _, op := range []string{"spool", "commit", "manifest"} {
		v, _ := fams.Value("multiproxy_storage_errors_total", map[string]string{"upstream": "docker.io", "op": op})
		errs += v
	}
	if errs == 0 {
		t.Error("multiproxy_storage_errors_total{upstream=docker.io} did not count the failed writes")
	}
	// The log has what the client was not told.
	if !strings.Contains(p.Logs(), storage) {
		t.Errorf("the log does not name the storage that fails:\n%s", p.Logs())
	}

	// Writable again: the next fill that commits clears it.
	if err := os.Remove(storage); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(storage, 0o750); err != nil {
		t.Fatal(err)
	}
	pull(t, p.URL("docker.io"), "library/app", "2")
	ts.WaitUntil(t, 2*probeInterval+time.Second, "docker.io ready again", func() (bool, string) {
		r = getReadyz(t, p)
		return r.code == http.StatusOK && r.state("docker.io") == "reachable", fmt.Sprintf("%d %s", r.code, r.raw)
	})
}

// The filesystem figures of every upstream are on /metrics at once, before
// any pull.
func TestDiskMetricsLive(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	fams := ts.Scrape(t, p.AdminURL())
	hub := map[string]string{"upstream": "docker.io"}
	size, _ := fams.Value("multiproxy_disk_size_bytes", hub)
	free, ok := fams.Value("multiproxy_disk_free_bytes", hub)
	if !ok || free <= 0 || free > size {
		t.Errorf("multiproxy_disk_free_bytes{upstream=docker.io} = %v (present %v) of %v, want the free bytes", free, ok, size)
	}
	// No disk.min_free in the config: 5% or 1 GiB, whichever is smaller.
	if v, ok := fams.Value("multiproxy_disk_min_free_bytes", hub); !ok || v != float64(min(int64(size)/20, 1<<30)) {
		t.Errorf("multiproxy_disk_min_free_bytes{upstream=docker.io} = %v (present %v) on %v bytes, want the default watermark", v, ok, size)
	}
	if reserved, ok := fams.Value("multiproxy_disk_reserved_bytes", map[string]string{"upstream": "docker.io"}); !ok || reserved != 0 {
		t.Errorf("multiproxy_disk_reserved_bytes{upstream=docker.io} = %v (present %v), want 0 with no fill running", reserved, ok)
	}
	for _, labels := range []map[string]string{
		{"upstream": "docker.io", "reason": "no_space"}, {"upstream": "docker.io", "reason": "storage_error"},
	} {
		if v, ok := fams.Value("multiproxy_fill_uncached_total", labels); !ok || v != 0 {
			t.Errorf("multiproxy_fill_uncached_total%v = %v (present %v), want 0", labels, v, ok)
		}
	}
}
