package proxy_test

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

func TestOnePortRoutesByNamespaceAndPathPrefix(t *testing.T) {
	hub := ts.StartRegistry(t, ts.RegistryOptions{})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	// The same repository name on both registries, with different content:
	// routing to the wrong upstream would serve the wrong image.
	hubImg := ts.PushImage(t, hub, "org/app:1", 1, 2048)
	ghcrImg := ts.PushImage(t, ghcr, "org/app:1", 1, 2048)

	cfg := ts.NewProxyConfig(t,
		ts.ProxyUpstream{Name: "docker.io", Reg: hub},
		ts.ProxyUpstream{Name: "ghcr.io", Reg: ghcr},
	)
	cfg.ListenAll = "127.0.0.1:0"
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Listen = ""
	}
	p := ts.StartProxyConfig(t, cfg)
	base := "http://" + p.Addr("docker.io")
	if p.Addr("docker.io") != p.Addr("ghcr.io") {
		t.Fatalf("one-port mode serves on %s and %s", p.Addr("docker.io"), p.Addr("ghcr.io"))
	}

	for _, c := range []struct{ ns, want string }{
		{"docker.io", ts.Digest(t, hubImg)},
		{"index.docker.io", ts.Digest(t, hubImg)},
		{"ghcr.io", ts.Digest(t, ghcrImg)},
	} {
		resp := get(t, base+"/v2/org/app/manifests/1?ns="+c.ns, http.MethodGet)
		if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != c.want {
			t.Errorf("ns=%s: %d %s, want %s", c.ns, resp.StatusCode, got, c.want)
		}
	}

	// Clients that send no ns name the registry as the first path segment.
	for reg, want := range map[string]string{"docker.io": ts.Digest(t, hubImg), "ghcr.io": ts.Digest(t, ghcrImg)} {
		ref, err := name.ParseReference(p.Addr("docker.io")+"/"+reg+"/org/app:1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref, ts.PullOptions()...)
		if err != nil {
			t.Fatalf("pull %s by path prefix: %v", reg, err)
		}
		ts.VerifyImage(t, img)
		if got := ts.Digest(t, img); got != want {
			t.Errorf("path prefix %s: %s, want %s", reg, got, want)
		}
	}

	// A listener on loopback stands in for a host an attacker names: the
	// cache must never connect to it, whatever ns or path prefix says.
	bait, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bait.Close()
	var dialed atomic.Int64
	go func() {
		for {
			c, err := bait.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()
	for _, url := range []string{
		base + "/v2/org/app/manifests/1?ns=" + bait.Addr().String(),
		base + "/v2/" + bait.Addr().String() + "/org/app/manifests/1",
		base + "/v2/org/app/blobs/sha256:" + strings.Repeat("a", 64) + "?ns=" + bait.Addr().String(),
	} {
		resp := get(t, url, http.MethodGet)
		if code := ociCode(t, resp); resp.StatusCode != http.StatusNotFound || code != "NAME_UNKNOWN" {
			t.Errorf("%s: %d %s, want 404 NAME_UNKNOWN", url, resp.StatusCode, code)
		}
	}
	if n := dialed.Load(); n != 0 {
		t.Errorf("an unknown registry name made the cache connect to it %d times", n)
	}
}
