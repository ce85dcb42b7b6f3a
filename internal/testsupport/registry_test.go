package testsupport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"go.uber.org/goleak"
)

// pullImage pulls ref and fully validates it, which downloads every blob
// and checks its digest and diff_id.
func pullImage(t *testing.T, r *Registry, ref string, want v1.Image) {
	t.Helper()
	got, err := remote.Image(mustRef(t, r.Ref(ref)), r.RemoteOptions()...)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if err := checkImage(got); err != nil {
		t.Fatalf("validate %s: %v", ref, err)
	}
	if g, w := Digest(t, got), Digest(t, want); g != w {
		t.Fatalf("pulled %s has digest %s, pushed %s", ref, g, w)
	}
}

func TestPlainRegistryRoundTrip(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{})
	if !strings.HasPrefix(r.URL(), "http://127.0.0.1:") || r.CAFile() != "" {
		t.Fatalf("URL %q CAFile %q", r.URL(), r.CAFile())
	}

	img := PushImage(t, r, "team/app:v1", 2, 4096)
	pullImage(t, r, "team/app:v1", img)
	if ls := LayerDigests(t, img); len(ls) != 2 || ls[0] == ls[1] {
		t.Fatalf("layer digests %v", ls)
	}
	cf, err := img.ConfigFile()
	if err != nil || cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.RootFS.DiffIDs) != 2 {
		t.Fatalf("config %+v, %v", cf, err)
	}
	if other := PushImage(t, r, "team/app:v2", 2, 4096); Digest(t, other) == Digest(t, img) {
		t.Fatal("two PushImage calls produced the same image")
	}

	idx := PushIndex(t, r, "team/multi:v1")
	got, err := remote.Index(mustRef(t, r.Ref("team/multi:v1")), r.RemoteOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkIndex(got); err != nil {
		t.Fatal(err)
	}
	if Digest(t, got) != Digest(t, idx) {
		t.Fatal("index digest mismatch")
	}
	im, err := got.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var archs []string
	for _, d := range im.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" {
			t.Fatalf("descriptor without linux platform: %+v", d)
		}
		archs = append(archs, d.Platform.Architecture)
	}
	if strings.Join(archs, ",") != "amd64,arm64" {
		t.Fatalf("platforms %v", archs)
	}

	// Deletion must be enabled so tests can change the upstream.
	byDigest := mustRef(t, r.Ref("team/app@"+Digest(t, img)))
	if err := remote.Delete(byDigest, r.RemoteOptions()...); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = remote.Image(byDigest, r.RemoteOptions()...)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusNotFound {
		t.Fatalf("pull after delete: %v", err)
	}
}

func TestAuthRegistry(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{Username: "alice", Password: "s3cret"})
	img := PushImage(t, r, "private/app:v1", 1, 1024)

	anon := []remote.Option{remote.WithTransport(r.HTTPClient().Transport)}
	_, err := remote.Image(mustRef(t, r.Ref("private/app:v1")), anon...)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous pull: want 401, got %v", err)
	}

	resp, err := r.HTTPClient().Get(r.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
		t.Fatalf("GET /v2/: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	req, _ := http.NewRequest(http.MethodGet, r.URL()+"/v2/", nil)
	req.SetBasicAuth("alice", "wrong")
	resp, err = r.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", resp.StatusCode)
	}

	pullImage(t, r, "private/app:v1", img)
}

func TestTLSRegistry(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{TLS: true, Username: "bob", Password: "pw"})
	if !strings.HasPrefix(r.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %q", r.URL())
	}
	pemBytes, err := os.ReadFile(r.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("CA file is not PEM")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !ca.IsCA {
		t.Fatalf("CA cert: %v (IsCA=%v)", err, ca != nil && ca.IsCA)
	}

	img := PushImage(t, r, "secure/app:v1", 2, 2048)
	pullImage(t, r, "secure/app:v1", img)
	idx := PushIndex(t, r, "secure/multi:v1")
	got, err := remote.Index(mustRef(t, r.Ref("secure/multi:v1")), r.RemoteOptions()...)
	if err != nil || checkIndex(got) != nil || Digest(t, got) != Digest(t, idx) {
		t.Fatalf("index pull over TLS: %v", err)
	}

	// A client that does not trust the CA must fail verification rather
	// than silently fall back to something else.
	untrusting := &http.Client{Transport: &http.Transport{}}
	_, err = untrusting.Get(r.URL() + "/v2/")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("want certificate verification error, got %v", err)
	}
}

func requireRefused(t *testing.T, r *Registry) {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.Host(), 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s succeeded, want connection refused", r.Host())
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: want connection refused, got %v", r.Host(), err)
	}
	_, err = r.HTTPClient().Get(r.URL() + "/v2/")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET on stopped registry: want connection refused, got %v", err)
	}
}

func TestStopStartKeepsAddressAndStorage(t *testing.T) {
	t.Parallel()
	r := NewRegistry(t, RegistryOptions{})
	requireRefused(t, r)

	r.Start()
	host := r.Host()
	img := PushImage(t, r, "restart/app:v1", 1, 8192)
	r.Stop()
	requireRefused(t, r)
	r.Stop() // idempotent

	for range 2 {
		r.Start()
		if r.Host() != host {
			t.Fatalf("host changed from %s to %s", host, r.Host())
		}
		pullImage(t, r, "restart/app:v1", img)
		r.Stop()
		requireRefused(t, r)
	}
	r.Start()
	r.Start() // no-op while serving
	pullImage(t, r, "restart/app:v1", img)
}

// Not parallel: goleak compares against the goroutines present when it
// starts, which other tests would disturb.
func TestStopReleasesHeldRequestsWithoutLeaks(t *testing.T) {
	opts := append(LeakIgnores(), goleak.IgnoreCurrent())
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) { stopReleasesHeld(t, tlsOn) })
	}
	goleak.VerifyNone(t, opts...)
}

func stopReleasesHeld(t *testing.T, tlsOn bool) {
	{
		f := NewFaults()
		r := StartRegistry(t, RegistryOptions{Wrap: f.Wrap, TLS: tlsOn})
		img := PushImage(t, r, "leak/app:v1", 1, 1024)
		blob := r.BlobURL("leak/app", LayerDigests(t, img)[0])
		f.Add(Rule{PathContains: "/blobs/", Action: BlackHole()})

		errc := make(chan error, 1)
		go func() {
			// No client timeout: only Stop can end this request.
			resp, err := r.HTTPClient().Get(blob)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			errc <- err
		}()
		waitFor(t, func() bool { return f.Count("GET", "/blobs/") == 1 })

		r.Stop()
		select {
		case err := <-errc:
			if err == nil {
				t.Fatal("black-holed request succeeded")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("request still hanging after Stop")
		}
	}
}

func mustRef(t testing.TB, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met within 5s")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
