package admin

import (
	"bytes"
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
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

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

// scrape fetches and parses the proxy's /metrics.
func scrape(t *testing.T, p *ts.Proxy) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(p.AdminURL() + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value is the counter or gauge value of the one series of name whose
// labels include want; ok is false if there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, ok bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, w := range want {
			if got[k] != w {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// getJSON GETs url and decodes the body into out, returning the status.
func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %d %q is not JSON: %v", url, resp.StatusCode, body, err)
	}
	return resp.StatusCode
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
	Ready     bool `json:"ready"`
	Upstreams []struct {
		Name      string    `json:"name"`
		Listen    string    `json:"listen"`
		Serving   bool      `json:"serving"`
		State     string    `json:"state"`
		Since     time.Time `json:"since"`
		LastError string    `json:"last_error"`
	} `json:"upstreams"`
	code int
}

func getReadyz(t *testing.T, p *ts.Proxy) readyz {
	t.Helper()
	var r readyz
	r.code = getJSON(t, p.AdminURL()+"/readyz", &r)
	return r
}

func (r readyz) state(name string) string {
	for _, u := range r.Upstreams {
		if u.Name == name {
			return u.State
		}
	}
	return ""
}

// post sends a bodiless POST with an optional Authorization header value.
func post(t *testing.T, url, authorization string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("POST %s: %d %q is not JSON: %v", url, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, resp.Header, body
}

// waitFor polls cond until it holds or within passes; it returns how long
// that took. cond returns a description of what it saw, for the failure.
func waitFor(t *testing.T, within time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, saw := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v; last saw %s", what, within, saw)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

func fetch(t *testing.T, url, accept string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, resp.Body); err != nil {
		t.Fatalf("GET %s: read: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, buf.String())
	}
	return buf.Bytes()
}

// labelsOf formats a series' labels, for messages.
func labelsOf(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	return "{" + strings.Join(parts, ",") + "}"
}
