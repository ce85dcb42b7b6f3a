package trust

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// client never reuses connections across tests; its timeout only catches a
// hang.
var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// sink is a server that must never be reached: it counts every connection
// accepted and every Authorization header it is sent.
type sink struct {
	URL   string
	conns atomic.Int64

	mu    sync.Mutex
	authz []string
}

// startSink listens on addr ("127.0.0.2:0" for the metadata stand-in).
func startSink(t *testing.T, addr string) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &sink{URL: "http://" + ln.Addr().String()}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			if a := r.Header.Get("Authorization"); a != "" {
				s.authz = append(s.authz, a)
			}
			s.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"Code":"Success","AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"instance-secret"}`)
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

func (s *sink) authorizations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.authz...)
}

const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

// get sends a GET and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	// As a pulling client asks: a manifest without its type in Accept is
	// refused, by the cache as by distribution.
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wantOCIError checks a failed answer as a client reads it: a 5xx with the
// OCI error JSON, and no byte of what the refused hop would have said.
func wantOCIError(t *testing.T, what string, code int, body string) {
	t.Helper()
	if code != http.StatusBadGateway && code != http.StatusServiceUnavailable {
		t.Errorf("%s: status %d, want 502 or 503; body %q", what, code, body)
	}
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || len(e.Errors) == 0 || e.Errors[0].Code == "" {
		t.Errorf("%s: body %q is not the OCI error JSON", what, body)
	}
	if strings.Contains(body, "instance-secret") {
		t.Errorf("%s: the refused hop's answer reached the client: %q", what, body)
	}
}
