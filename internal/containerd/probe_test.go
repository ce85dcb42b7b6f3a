package containerd

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCheckProbe points hosts.toml files at a registry that wants a token
// (401: fine), a server that is not a registry (404), a closed port and a
// server that never answers, and expects the last three reported, each at
// its [host] line, within the probe timeout.
func TestCheckProbe(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Www-Authenticate", `Bearer realm="https://auth.example/token"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer ok.Close()
	notRegistry := httptest.NewServer(http.NotFoundHandler())
	defer notRegistry.Close()
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(release)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()

	root := t.TempDir()
	certs := filepath.Join(root, "certs.d")
	for dir, url := range map[string]string{"a.io": ok.URL, "b.io": notRegistry.URL, "c.io": closed, "d.io": hang.URL} {
		writeFile(t, filepath.Join(certs, dir, "hosts.toml"), "server = \"https://"+dir+"\"\n\n[host.\""+url+"\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
	}
	cfg := filepath.Join(root, "config.toml")
	writeFile(t, cfg, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \""+certs+"\"\n")

	start := time.Now()
	r := checkFile(t, cfg, CheckOptions{Probe: true, ProbeTimeout: 300 * time.Millisecond})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("probing took %v; probes should run concurrently within their timeout", took)
	}
	var got []string
	for _, f := range r.Findings {
		if f.Code == CodeMirrorUnreachable {
			if f.Line != 3 || !strings.HasPrefix(f.Text, "[host.") {
				t.Errorf("%s: line %d %q, want the [host] line", f.File, f.Line, f.Text)
			}
			got = append(got, filepath.Base(filepath.Dir(f.File)))
		}
	}
	if want := []string{"b.io", "c.io", "d.io"}; !slices.Equal(got, want) {
		t.Errorf("unreachable mirrors reported for %v, want %v\n%s", got, want, reportText(t, r))
	}
	text := reportText(t, r)
	for _, s := range []string{"status 404 Not Found", "connection refused", "no answer within the timeout"} {
		if !strings.Contains(text, s) {
			t.Errorf("report lacks %q:\n%s", s, text)
		}
	}
}
