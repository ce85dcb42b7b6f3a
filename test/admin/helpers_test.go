package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	api "github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/serve"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// probeInterval is the health probe period in these tests; production
// probes every 10 s.
const probeInterval = 200 * time.Millisecond

func TestMain(m *testing.M) {
	// Set before any proxy starts, so no test races on them.
	serve.ProbeInterval = probeInterval
	serve.StoredBytesMaxAge = 100 * time.Millisecond
	os.Exit(m.Run())
}

// client never reuses connections across tests and never waits forever.
var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// getJSON GETs url and decodes the body into out, returning the status.
func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	code, body := get(t, url, "")
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %d %q is not JSON: %v", url, code, body, err)
	}
	return code
}

func status(t *testing.T, p *ts.Proxy) api.Status {
	t.Helper()
	var st api.Status
	if code := getJSON(t, p.AdminURL()+"/api/v1/status", &st); code != http.StatusOK {
		t.Fatalf("/api/v1/status: %d", code)
	}
	return st
}

func upstreamStatus(t *testing.T, st api.Status, name string) api.UpstreamStatus {
	t.Helper()
	for _, u := range st.Upstreams {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("status has no upstream %q: %+v", name, st.Upstreams)
	return api.UpstreamStatus{}
}

// readyz is the /readyz answer.
type readyz struct {
	Ready     bool             `json:"ready"`
	Upstreams []readyzUpstream `json:"upstreams"`
	code      int
	raw       string // the body as sent
}

// readyzUpstream is one upstream of /readyz.
type readyzUpstream struct {
	Name      string    `json:"name"`
	Listen    string    `json:"listen"`
	Serving   bool      `json:"serving"`
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error"`
	Reason    string    `json:"reason"` // why it is degraded
}

// getReadyz GETs /readyz, whose ready flag must agree with its status.
func getReadyz(t *testing.T, p *ts.Proxy) readyz {
	t.Helper()
	code, body := get(t, p.AdminURL()+"/readyz", "")
	r := readyz{code: code, raw: string(body)}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/readyz: %d %q is not JSON: %v", code, body, err)
	}
	if r.Ready != (r.code == http.StatusOK) {
		t.Errorf("/readyz says ready=%v with status %d", r.Ready, r.code)
	}
	return r
}

func (r readyz) state(name string) string { return r.upstream(name).State }

func (r readyz) upstream(name string) readyzUpstream {
	for _, u := range r.Upstreams {
		if u.Name == name {
			return u
		}
	}
	return readyzUpstream{}
}

// post sends a bodiless POST with an optional Authorization header value
// and decodes the JSON answer.
func post(t *testing.T, url, authorization string) (int, http.Header, map[string]any) {
	t.Helper()
	code, h, raw := do(t, http.MethodPost, url, "Authorization", authorization)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("POST %s: %d %q is not JSON: %v", url, code, raw, err)
	}
	return code, h, body
}

// do sends a bodiless request, with the header key: value unless value is
// empty, and returns the answer's status, headers and body, whatever the
// status.
func do(t *testing.T, method, url, key, value string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if value != "" {
		req.Header.Set(key, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, body
}

// pulled is what one pull received, split the way the proxy counts it.
type pulled struct {
	// manifest and base are what the proxy answers from its store even on
	// a cold pull (it fills a manifest, then serves the stored copy).
	manifest, base int64
	// blobs are the config and layers, streamed from the upstream when cold.
	blobs  int64
	nBlobs int
}

func (p pulled) total() int64 { return p.manifest + p.base + p.blobs }

// pullAll pulls every image of w through the proxy's port for it and adds
// up what came.
func pullAll(t *testing.T, p *ts.Proxy, w workload) pulled {
	t.Helper()
	var sum pulled
	for _, img := range w.images {
		got := pull(t, p.URL(w.upstream), img.repo, img.tag)
		sum.base += got.base
		sum.manifest += got.manifest
		sum.blobs += got.blobs
		sum.nBlobs += got.nBlobs
	}
	return sum
}

// pull does what a container runtime does for one single-platform image,
// over plain HTTP so every byte is accounted for: ping /v2/, GET the
// manifest by tag, then GET the config and every layer, checking digests.
func pull(t *testing.T, base, repo, tag string) pulled {
	t.Helper()
	var out pulled
	out.base = int64(len(fetch(t, base+"/v2/", "")))

	manifest := fetch(t, base+"/v2/"+repo+"/manifests/"+tag, strings.Join(upstream.ManifestAccept, ", "))
	out.manifest = int64(len(manifest))
	var m struct {
		Config struct {
			Digest string `json:"digest"`
		} `json:"config"`
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil || m.Config.Digest == "" {
		t.Fatalf("pull %s:%s: manifest %q: %v", repo, tag, manifest, err)
	}
	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}
	for _, d := range digests {
		blob := fetch(t, base+"/v2/"+repo+"/blobs/"+d, "")
		sum := sha256.Sum256(blob)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != d {
			t.Fatalf("pull %s:%s: blob %s arrived as %s", repo, tag, d, got)
		}
		out.blobs += int64(len(blob))
		out.nBlobs++
	}
	return out
}

// fetch GETs url and returns its body, failing the test unless it is a 200.
func fetch(t *testing.T, url, accept string) []byte {
	t.Helper()
	code, body := get(t, url, accept)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d: %s", url, code, body)
	}
	return body
}

// get fetches url and returns its status and body, whatever the status.
func get(t *testing.T, url, accept string) (int, []byte) {
	t.Helper()
	code, _, body := do(t, http.MethodGet, url, "Accept", accept)
	return code, body
}

// labelsOf formats a series' labels, for messages.
func labelsOf(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	return "{" + strings.Join(parts, ",") + "}"
}
