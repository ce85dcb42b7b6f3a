package proxy_test

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func TestPortAnswersOnlyForItsOwnRegistry(t *testing.T) {
	up, f := faultyUpstream(t)
	img := ts.PushImage(t, up, "library/app:1", 1, 1024)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) { u.Aliases = []string{"mirror.example.org"} }})

	for _, c := range []struct {
		ns     string
		status int
	}{
		{"", http.StatusOK}, // not containerd: served as this port's upstream
		{"docker.io", http.StatusOK},
		{"index.docker.io", http.StatusOK},
		{"registry-1.docker.io", http.StatusOK},
		{"mirror.example.org", http.StatusOK},
		{up.Host(), http.StatusOK}, // the remote's own host
		{"ghcr.io", http.StatusNotFound},
		{"attacker.example", http.StatusNotFound},
	} {
		f.ResetCounts()
		u := p.URL("docker.io") + "/v2/library/app/manifests/1"
		if c.ns != "" {
			u += "?ns=" + url.QueryEscape(c.ns)
		}
		resp := get(t, u, http.MethodGet)
		if resp.StatusCode != c.status {
			t.Errorf("ns=%q: %d, want %d", c.ns, resp.StatusCode, c.status)
		}
		if c.status == http.StatusOK && resp.Header.Get("Docker-Content-Digest") != ts.Digest(t, img) {
			t.Errorf("ns=%q: wrong digest", c.ns)
		}
		if c.status == http.StatusNotFound {
			if code := ociCode(t, resp); code != "NAME_UNKNOWN" {
				t.Errorf("ns=%q: code %q, want NAME_UNKNOWN", c.ns, code)
			}
			if n := len(f.Requests()); n != 0 {
				t.Errorf("ns=%q reached the upstream %d times", c.ns, n)
			}
		}
	}
}
