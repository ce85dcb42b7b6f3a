package proxy_test

import (
	"crypto/tls"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// With tls configured, an upstream's port serves HTTPS; a renewed
// certificate is picked up by a reload without closing the listener.
func TestTLSListenerServesAndReloadsItsCertificate(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	img := ts.PushImage(t, up, "library/app:1", 2, 64<<10)
	first := ts.WriteServerCert(t, t.TempDir())
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	cfg.TLS.CertFile, cfg.TLS.KeyFile = first.CertFile, first.KeyFile
	cfg.Upstreams[0].TLS = cfg.TLS
	p := ts.StartProxyConfig(t, cfg)

	pull := func(ca ts.ServerCert) error {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}}
		defer tr.CloseIdleConnections()
		ref, err := name.ParseReference(p.Addr("docker.io") + "/library/app:1")
		if err != nil {
			return err
		}
		got, err := remote.Image(ref, remote.WithTransport(tr))
		if err != nil {
			return err
		}
		ts.VerifyImage(t, got)
		if ts.Digest(t, got) != ts.Digest(t, img) {
			t.Errorf("pulled %s over TLS, want %s", ts.Digest(t, got), ts.Digest(t, img))
		}
		return nil
	}
	if err := pull(first); err != nil {
		t.Fatalf("pull over TLS: %v", err)
	}
	resp, err := http.Get("http://" + p.Addr("docker.io") + "/v2/")
	if err == nil && resp.StatusCode == http.StatusOK {
		t.Error("the TLS port also answered plain HTTP")
	}

	// The certificate is renewed in place (another CA, same files) and
	// the config reloaded: the next handshake presents the new one.
	second := ts.WriteServerCert(t, t.TempDir())
	for _, f := range [][2]string{{second.CertFile, first.CertFile}, {second.KeyFile, first.KeyFile}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Process.Reload(t.Context(), p.Config); err != nil {
		t.Fatalf("reload: %v", err)
	}
	ts.WaitFor(t, 5*time.Second, "the renewed certificate is served", func() bool { return pull(second) == nil })
	if err := pull(first); err == nil {
		t.Error("after the reload the old certificate is still served")
	}
}
