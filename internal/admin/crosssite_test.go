package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a log the server's goroutines write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// adminServer serves the admin API over real HTTP on 127.0.0.1, as the
// default admin listener does, logging into the returned buffer.
func adminServer(t *testing.T, o Options) (*httptest.Server, *backend, *syncBuffer) {
	t.Helper()
	b := &backend{}
	logs := &syncBuffer{}
	o.Backend = b
	o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	srv := httptest.NewServer(Handler(o))
	t.Cleanup(srv.Close)
	return srv, b, logs
}

// send POSTs to srv's target with the given Host (empty: the server's
// address, as curl sends it) and headers, and decodes the JSON answer.
func send(t *testing.T, srv *httptest.Server, target, host string, header http.Header) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", target, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read: %v", target, err)
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("POST %s: %d %q is not JSON: %v", target, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, body
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestTokenlessActionsRefuseWebPages(t *testing.T) {
	srv, b, logs := adminServer(t, Options{Loopback: true})
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	cases := []struct {
		name       string
		host       string
		header     http.Header
		wantReason string // in the log and the answer
	}{
		{"a cross-site fetch from evil.example", "",
			hdr("Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"), `Origin "http://evil.example"`},
		{"a foreign Origin alone (a browser without Sec-Fetch-*)", "",
			hdr("Origin", "http://evil.example"), `Origin "http://evil.example"`},
		{"Sec-Fetch-Site cross-site alone", "",
			hdr("Sec-Fetch-Site", "cross-site"), `Sec-Fetch-Site is "cross-site"`},
		// Pages on other loopback ports are other programs.
		{"a page on another port of localhost", "",
			hdr("Origin", "http://localhost:3000", "Sec-Fetch-Site", "same-site"), `Sec-Fetch-Site is "same-site"`},
		{"a sandboxed frame or file: page", "",
			hdr("Origin", "null"), `Origin "null"`},
		{"an origin that only starts like loopback", "",
			hdr("Origin", "http://127.0.0.1.evil.example"), `Origin "http://127.0.0.1.evil.example"`},
		{"a second, foreign Origin", "",
			hdr("Origin", "http://127.0.0.1:"+port, "Origin", "http://evil.example"), `Origin "http://evil.example"`},
		{"DNS rebinding: evil.example resolving to 127.0.0.1", "evil.example:" + port,
			hdr("Origin", "http://evil.example:"+port, "Sec-Fetch-Site", "same-origin"), `Host "evil.example:`},
		{"a rebound Host alone", "evil.example", nil, `Host "evil.example"`},
		{"a Host that only starts like loopback", "localhost.evil.example:" + port, nil, `Host "localhost.evil.example:`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			logged := len(logs.String())
			for _, target := range mutating {
				code, body := send(t, srv, target, c.host, c.header)
				if code != http.StatusForbidden {
					t.Errorf("POST %s: %d %v, want 403", target, code, body)
				}
				if msg, _ := body["error"].(string); !strings.Contains(msg, c.wantReason) {
					t.Errorf("POST %s: error %q does not say why (%s)", target, msg, c.wantReason)
				}
			}
			if ran := b.ran(); len(ran) != 0 {
				t.Errorf("refused requests reached the backend: %v", ran)
			}
			log := logs.String()[logged:]
			// The text handler quotes the reason, escaping its quotes.
			reason := strings.ReplaceAll(c.wantReason, `"`, `\"`)
			for _, want := range []string{"level=WARN", "admin request refused", "method=POST", "path=/api/v1/purge", "path=/api/v1/gc", reason} {
				if !strings.Contains(log, want) {
					t.Errorf("the log lacks %q:\n%s", want, log)
				}
			}
		})
	}
}

func TestTokenlessActionsServeThisHost(t *testing.T) {
	srv, b, logs := adminServer(t, Options{Loopback: true})
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	cases := []struct {
		name   string
		host   string
		header http.Header
	}{
		{"curl: no Origin, no Sec-Fetch-Site", "", nil},
		{"the page's own origin", "", hdr("Origin", "http://127.0.0.1:"+port, "Sec-Fetch-Site", "same-origin")},
		{"a browser request no page started", "", hdr("Sec-Fetch-Site", "none")},
		{"Host localhost", "localhost:" + port, hdr("Origin", "http://localhost:"+port)},
		{"Host LOCALHOST without a port", "LOCALHOST", nil},
		{"Host [::1]", "[::1]:" + port, hdr("Origin", "http://[::1]:"+port)},
		{"Host elsewhere in 127/8", "127.0.0.2:" + port, nil},
		{"an ssh -L tunnel on another port", "localhost:19090", hdr("Origin", "https://localhost:19090", "Sec-Fetch-Site", "same-origin")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(b.ran())
			for _, target := range mutating {
				if code, body := send(t, srv, target, c.host, c.header); code != http.StatusOK {
					t.Errorf("POST %s: %d %v, want 200", target, code, body)
				}
			}
			if ran := b.ran()[before:]; len(ran) != len(mutating) {
				t.Errorf("ran %v, want all of %v", ran, mutating)
			}
			if strings.Contains(logs.String(), "refused") {
				t.Errorf("an accepted request was logged as refused:\n%s", logs.String())
			}
		})
	}
}

func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	const token = "s3cret"
	cases := []struct {
		auth string
		want int
	}{
		{"Bearer " + token, http.StatusOK},
		{"bearer " + token, http.StatusOK},
		{"BEARER " + token, http.StatusOK},
		{"Bearer  " + token, http.StatusOK}, // RFC 9110: one or more spaces
		{"bearer s3cre", http.StatusForbidden},
		{"bearer " + token + "X", http.StatusForbidden},
		{"bearer", http.StatusUnauthorized},
		{"bearers " + token, http.StatusUnauthorized},
		{"basic " + token, http.StatusUnauthorized},
	}
	for _, c := range cases {
		srv, b, logs := adminServer(t, Options{Token: token, Loopback: true})
		code, body := send(t, srv, mutating[0], "", hdr("Authorization", c.auth))
		if code != c.want {
			t.Errorf("Authorization %q: %d %v, want %d", c.auth, code, body, c.want)
		}
		if ran := len(b.ran()) == 1; ran != (c.want == http.StatusOK) {
			t.Errorf("Authorization %q: backend ran %v", c.auth, b.ran())
		}
		if strings.Contains(logs.String(), "s3cre") {
			t.Errorf("Authorization %q: the log has the token:\n%s", c.auth, logs.String())
		}
	}
}

// A page cannot send an Authorization header cross-site without CORS
// consent, so with a token the token alone decides, wherever the listener
// is and whatever names the request carries.
func TestTokenDecidesAlone(t *testing.T) {
	for _, loopback := range []bool{true, false} {
		srv, b, _ := adminServer(t, Options{Token: "s3cret", Loopback: loopback})
		h := hdr("Authorization", "Bearer s3cret", "Origin", "https://ops.example", "Sec-Fetch-Site", "cross-site")
		if code, body := send(t, srv, mutating[0], "multiproxy.internal:9090", h); code != http.StatusOK {
			t.Errorf("loopback %v: a request with the token: %d %v", loopback, code, body)
		}
		if len(b.ran()) != 1 {
			t.Errorf("loopback %v: ran %v", loopback, b.ran())
		}
	}
}
