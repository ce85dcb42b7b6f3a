package proxy_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A repository name outside the OCI grammar, though distribution's
// reference parser takes it for a registry host and a path
// (127.0.0.1:7005/library/small, as a client that put a registry behind the
// one-port prefix sends), is the client's mistake: 400 NAME_INVALID on every
// endpoint, and nothing sent upstream, whose own answer (distribution's
// storage fails with a 500) would otherwise reach the client.
func TestRepositoryNameWithAHostPortIsInvalid(t *testing.T) {
	up, f := faultyUpstream(t)
	ts.PushImage(t, up, "library/small:1", 1, 1024)
	perPort := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up, Tweak: func(u *config.Upstream) { u.Listen = "" }})
	cfg.ListenAll = "127.0.0.1:0"
	onePort := ts.StartProxyConfig(t, cfg).URL("docker.io")
	blob := "sha256:" + strings.Repeat("0", 64)
	var urls []string
	for _, repo := range []string{"127.0.0.1:7005/library/small", "[::1]:5000/library/small", "localhost:5000/small"} {
		for _, tail := range []string{"/manifests/1", "/manifests/" + blob, "/blobs/" + blob, "/tags/list", "/referrers/" + blob} {
			urls = append(urls,
				onePort+"/v2/docker.io/"+repo+tail,
				onePort+"/v2/"+repo+tail+"?ns=docker.io",
				perPort.URL("docker.io")+"/v2/"+repo+tail)
		}
	}
	f.ResetCounts()
	for _, url := range urls {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp := get(t, url, method)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s %s: %d, want 400", method, url, resp.StatusCode)
			}
			if method == http.MethodGet {
				if code := ociCode(t, resp); code != "NAME_INVALID" {
					t.Errorf("GET %s: code %q, want NAME_INVALID", url, code)
				}
			}
		}
	}
	// Health probes ping /v2/ meanwhile; only repository requests count.
	if n := f.Count("", "/small/"); n != 0 {
		t.Errorf("invalid names reached the upstream %d times: %v", n, f.Requests())
	}
	// The same repository under its real name still pulls.
	pullImage(t, perPort, "docker.io", "library/small:1")
}
