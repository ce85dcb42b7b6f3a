package testsupport

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// ServerCert is a certificate for 127.0.0.1 and localhost, signed by a CA of
// its own, written as PEM files for a config's tls.cert_file and key_file.
type ServerCert struct {
	CertFile, KeyFile string
	// CAFile is the CA's PEM, as a node's hosts.toml `ca` or certs.d
	// ca.crt names it; Pool holds the same CA for Go clients.
	CAFile string
	Pool   *x509.CertPool
}

// WriteServerCert generates a CA and a server certificate into dir.
func WriteServerCert(t testing.TB, dir string) ServerCert {
	t.Helper()
	pki, err := newTestPKI()
	if err != nil {
		t.Fatalf("testsupport: generate certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(pki.server.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	sc := ServerCert{
		CertFile: filepath.Join(dir, "server.crt"),
		KeyFile:  filepath.Join(dir, "server.key"),
		CAFile:   filepath.Join(dir, "ca.crt"),
		Pool:     pki.pool,
	}
	files := map[string][]byte{
		sc.CertFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pki.server.Certificate[0]}),
		sc.KeyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		sc.CAFile:   pki.caPEM,
	}
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return sc
}
