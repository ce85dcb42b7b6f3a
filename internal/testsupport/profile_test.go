package testsupport

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// noRedirects is a client on r's transport that shows redirects instead of
// following them.
func noRedirects(r *Registry) *http.Client {
	return &http.Client{
		Transport:     r.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// imageBlobs is the config digest followed by the layer digests.
func imageBlobs(t testing.TB, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{m.Config.Digest.String()}, LayerDigests(t, img)...)
}

func TestProfilesPullDirect(t *testing.T) {
	t.Parallel()
	ForEachProfile(t, func(t *testing.T, up *Upstream) {
		t.Parallel()
		img := up.Push(t, "library/app:1", 2, 8192)
		idx := up.PushIndex(t, "library/multi:1")
		if up.CDN != nil {
			up.CDN.ResetCounts()
		}
		if up.Tokens != nil {
			up.Tokens.ResetCounts()
		}

		got, err := remote.Image(mustRef(t, up.Ref("library/app:1")), up.RemoteOptions()...)
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		VerifyImage(t, got)
		if Digest(t, got) != Digest(t, img) {
			t.Fatalf("pulled %s, pushed %s", Digest(t, got), Digest(t, img))
		}
		gotIdx, err := remote.Index(mustRef(t, up.Ref("library/multi:1")), up.RemoteOptions()...)
		if err != nil {
			t.Fatalf("pull index: %v", err)
		}
		VerifyIndex(t, gotIdx)
		if Digest(t, gotIdx) != Digest(t, idx) {
			t.Fatal("index digest mismatch")
		}

		if up.CDN != nil {
			for _, d := range imageBlobs(t, img) {
				if n := up.CDN.Count("GET", d); n != 1 {
					t.Errorf("blob %s: %d GETs at the CDN, want 1", d, n)
				}
				if n := up.Faults.Count("GET", d); n < 1 {
					t.Errorf("blob %s never asked of the registry", d)
				}
			}
			for _, r := range up.CDN.Requests() {
				if r.Authorization || r.Status != http.StatusOK || !strings.Contains(r.Query, "X-Signature=") {
					t.Errorf("CDN request %+v: want signed, without Authorization, 200", r)
				}
			}
			if n := up.CDN.AuthorizationSeen(); n != 0 {
				t.Errorf("%d CDN requests carried Authorization", n)
			}
		}
		if up.Tokens != nil {
			for _, r := range up.Tokens.Requests() {
				if r.Credentials || r.Status != http.StatusOK {
					t.Errorf("token request %+v: want anonymous and granted", r)
				}
				for _, s := range r.Scopes {
					if !strings.HasPrefix(s, "repository:"+up.StoredRepo("library/")) {
						t.Errorf("scope %q is not for a repository under %q", s, up.StoredRepo("library/"))
					}
				}
			}
		}
		if up.Front == nil {
			return
		}
		if n := up.Front.Count("GET", "/v2/library/app/manifests/1"); n != 1 {
			t.Errorf("%d manifest GETs at the front, want 1", n)
		}
		for _, r := range up.Front.Requests() {
			if strings.Contains(r.Path, "/manifests/") || strings.Contains(r.Path, "/blobs/") {
				want := up.Registry.svc.NamedURL() + "/v2/" + up.StoredRepo("library/")
				if r.Status != http.StatusTemporaryRedirect || !strings.HasPrefix(r.Location, want) {
					t.Errorf("front answered %+v, want 307 to %s...", r, want)
				}
			}
		}
	})
}

// TestTokenProfileVariants covers settings Profiles leaves at their
// defaults: credentials and TLS.
func TestTokenProfileVariants(t *testing.T) {
	t.Parallel()
	for _, p := range []Profile{
		{Name: "token-cdn-private", Token: true, CDN: true, Username: "alice", Password: "s3cret"},
		{Name: "token-cdn-tls", Token: true, CDN: true, TLS: true},
	} {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			up := p.Start(t)
			if p.TLS && (!strings.HasPrefix(up.URL, "https://") || !strings.HasPrefix(up.Tokens.URL(), "https://") || !strings.HasPrefix(up.CDN.URL(), "https://")) {
				t.Fatalf("TLS profile with URLs %s %s %s", up.URL, up.Tokens.URL(), up.CDN.URL())
			}
			img := up.Push(t, "private/app:1", 1, 4096)
			got, err := remote.Image(mustRef(t, up.Ref("private/app:1")), up.RemoteOptions()...)
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			VerifyImage(t, got)
			if Digest(t, got) != Digest(t, img) {
				t.Fatal("digest mismatch")
			}
			if up.CDN.AuthorizationSeen() != 0 || up.CDN.Count("GET", LayerDigests(t, img)[0]) != 1 {
				t.Fatalf("CDN requests: %+v", up.CDN.Requests())
			}
			if p.Username == "" {
				return
			}
			anon := []remote.Option{remote.WithTransport(up.Registry.transport)}
			_, err = remote.Image(mustRef(t, up.Ref("private/app:1")), anon...)
			var terr *transport.Error
			if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
				t.Fatalf("anonymous pull of a private upstream: want 401, got %v", err)
			}
		})
	}
}

func requireDialRefused(t *testing.T, hostport string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", hostport, 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s succeeded, want connection refused", hostport)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: want connection refused, got %v", hostport, err)
	}
}

func TestTokenCDNStopStart(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{Token: true, CDN: true})
	img := PushImage(t, r, "restart/app:1", 1, 4096)
	tok := fetchToken(t, r, "", "", "repository:restart/app:pull")
	blob := r.BlobURL("restart/app", LayerDigests(t, img)[0])
	hosts := []string{r.Host(), r.Tokens().Host(), r.CDN().Host()}

	r.Stop()
	for _, h := range hosts {
		requireDialRefused(t, h)
	}
	r.Start()
	if got := []string{r.Host(), r.Tokens().Host(), r.CDN().Host()}; strings.Join(got, " ") != strings.Join(hosts, " ") {
		t.Fatalf("addresses changed from %v to %v", hosts, got)
	}

	// Keys survive the restart, so a token issued before it is still good.
	req, err := http.NewRequest(http.MethodGet, blob, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := r.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || r.CDN().Count("GET", LayerDigests(t, img)[0]) != 1 {
		t.Fatalf("blob with pre-restart token: %d, CDN saw %+v", resp.StatusCode, r.CDN().Requests())
	}
	pullImage(t, r, "restart/app:1", img)
}

// TestFaultsOnTokenCDNRegistry: Faults sees the API host's traffic, and
// WrapCDN puts faults on the blob bytes, which no longer pass the API host.
func TestFaultsOnTokenCDNRegistry(t *testing.T) {
	t.Parallel()
	api, cdnFaults := NewFaults(), NewFaults()
	r := StartRegistry(t, RegistryOptions{Token: true, CDN: true, Wrap: api.Wrap, WrapCDN: cdnFaults.Wrap})
	img := PushImage(t, r, "faults/app:1", 1, 64<<10)
	layer := LayerDigests(t, img)[0]

	api.Add(Rule{Method: "GET", PathContains: "/manifests/", Times: 1, Action: Status(http.StatusNotFound, nil)})
	_, err := remote.Image(mustRef(t, r.Ref("faults/app:1")), r.RemoteOptions()...)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusNotFound {
		t.Fatalf("pull with injected 404: %v", err)
	}

	cdnFaults.Add(Rule{PathContains: strings.TrimPrefix(layer, "sha256:"), Times: 1, Action: Truncate(1000)})
	got, err := remote.Image(mustRef(t, r.Ref("faults/app:1")), r.RemoteOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkImage(got); err == nil {
		t.Fatal("layer cut short at the CDN, yet the image verified")
	}
	if n := r.CDN().Count("GET", layer); n != 1 {
		t.Fatalf("%d CDN GETs of the layer, want 1", n)
	}
	pullImage(t, r, "faults/app:1", img)
}
