package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// ociCode is the first OCI error code in an admin error body.
func ociCode(body map[string]any) string {
	errs, _ := body["errors"].([]any)
	if len(errs) == 0 {
		return ""
	}
	e, _ := errs[0].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// Admin errors are answers in the client's terms: a purge of a tag that was
// never cached is a 404 MANIFEST_UNKNOWN, not a 500 with the storage path
// of the tag link; no answer carries a path, a storage driver's message or
// an upstream's body.
func TestAdminErrorsCarryNoInternals(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	storage := p.Config.Upstreams[0].Storage.Path
	admin := p.AdminURL() + "/api/v1"
	accept := strings.Join(upstream.ManifestAccept, ", ")
	fetch(t, p.URL("docker.io")+"/v2/library/app/manifests/1", accept) // library/app:1 is cached

	purges := []struct {
		name, image string
		want        int
		code        string
	}{
		{"repository never cached", "docker.io/library/never:1", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"tag never cached in a cached repository", "docker.io/library/app:2", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"short name", "never/seen:latest", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"digest", "docker.io/library/app@sha256:" + strings.Repeat("a", 64), http.StatusBadRequest, "UNSUPPORTED"},
		{"unconfigured registry", "quay.io/x/y:1", http.StatusNotFound, ""},
		{"cached tag", "docker.io/library/app:1", http.StatusOK, ""},
		{"the same tag again", "docker.io/library/app:1", http.StatusNotFound, "MANIFEST_UNKNOWN"},
	}
	for _, c := range purges {
		code, _, body := post(t, admin+"/purge?image="+c.image, "")
		if code != c.want || ociCode(body) != c.code {
			t.Errorf("%s: purge %s: %d %v, want %d %s", c.name, c.image, code, body, c.want, c.code)
		}
		if msg, _ := body["error"].(string); code != http.StatusOK && msg == "" {
			t.Errorf("%s: no error message in %v", c.name, body)
		}
		raw, _ := json.Marshal(body)
		if l := leaks(string(raw), storage, p.Config.DataDir); l != "" {
			t.Errorf("%s: the answer carries %s: %s", c.name, l, raw)
		}
	}

	// Resolve of a tag the upstream does not have: the upstream's 404, not
	// its body or the Go error around it.
	var body map[string]any
	code := getJSON(t, admin+"/resolve?image=docker.io/library/app:missing", &body)
	raw, _ := json.Marshal(body)
	if code != http.StatusNotFound || ociCode(body) != "MANIFEST_UNKNOWN" {
		t.Errorf("resolve of a missing tag: %d %s, want 404 MANIFEST_UNKNOWN", code, raw)
	}
	msg, _ := body["error"].(string)
	if l := leaks(msg, storage, reg.URL()); l != "" || strings.Contains(msg, "upstream HEAD") || strings.Contains(msg, "{") {
		t.Errorf("resolve of a missing tag carries internals (%s): %q", l, msg)
	}

	// With the upstream gone, resolve of an uncached tag says so, briefly.
	reg.Stop()
	code = getJSON(t, admin+"/resolve?image=docker.io/library/other:1", &body)
	raw, _ = json.Marshal(body)
	if code != http.StatusServiceUnavailable || ociCode(body) != "UNAVAILABLE" {
		t.Errorf("resolve with the upstream down: %d %s, want 503 UNAVAILABLE", code, raw)
	}
	msg, _ = body["error"].(string)
	if l := leaks(msg, storage, reg.URL()); l != "" || strings.Contains(msg, "dial tcp") || strings.Contains(msg, "127.0.0.1") {
		t.Errorf("resolve with the upstream down carries internals (%s): %q", l, msg)
	}
}

// A collection over a store that cannot be read fails without telling the
// client where or why; the log has both.
func TestFailedGCCarriesNoInternals(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: reg})
	pull(t, p.URL("docker.io"), "library/app", "1")
	storage := p.Config.Upstreams[0].Storage.Path
	breakStore(t, storage)

	code, _, body := post(t, p.AdminURL()+"/api/v1/gc?upstream=docker.io&dry_run=true", "")
	raw, _ := json.Marshal(body)
	t.Logf("gc over a broken store: %d %s", code, raw)
	if code == http.StatusOK {
		t.Skipf("a collection over a store replaced by a file succeeded: %s", raw)
	}
	if l := leaks(string(raw), storage, p.Config.DataDir); l != "" {
		t.Errorf("failed gc: %d, the answer carries %s: %s", code, l, raw)
	}
	if msg, _ := body["error"].(string); msg == "" {
		t.Errorf("failed gc: no error message in %s", raw)
	}
}
