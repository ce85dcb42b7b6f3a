package serve

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/multiproxy/multiproxy/internal/config"
)

// onePortKey names the listen_all listener among the certificates.
const onePortKey = "listen_all"

// certStore holds the certificate each HTTPS listener serves, by listener
// (an upstream's name, or onePortKey). A listener asks for its certificate
// at every handshake, so a reload that re-reads the files takes effect for
// the next connection without closing the listener: a renewed certificate
// needs only `systemctl reload`.
type certStore struct {
	mu    sync.RWMutex
	certs map[string]*tls.Certificate
}

func newCertStore() *certStore { return &certStore{certs: map[string]*tls.Certificate{}} }

// loadAll reads the certificates cfg names, for every listener that serves
// HTTPS. Nothing is replaced unless all of them load.
func loadCerts(cfg config.Config) (map[string]*tls.Certificate, error) {
	out := map[string]*tls.Certificate{}
	var errs []error
	load := func(key, field string, t config.TLS) {
		if !t.Enabled() {
			return
		}
		c, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: load certificate: %w", field, err))
			return
		}
		out[key] = &c
	}
	if cfg.ListenAll != "" {
		load(onePortKey, "tls", cfg.TLS)
	}
	for i, u := range cfg.Upstreams {
		if u.Listen != "" {
			load(u.Name, fmt.Sprintf("upstreams[%d].tls", i), u.TLS)
		}
	}
	return out, errors.Join(errs...)
}

func (s *certStore) replace(certs map[string]*tls.Certificate) {
	s.mu.Lock()
	s.certs = certs
	s.mu.Unlock()
}

// listen wraps l in TLS with the certificate of key, if it has one.
func (s *certStore) listen(key string, l net.Listener) net.Listener {
	s.mu.RLock()
	_, ok := s.certs[key]
	s.mu.RUnlock()
	if !ok {
		return l
	}
	return s.wrap(key, l)
}

// listenWith wraps l in TLS when t is set, for a listener a reload adds:
// its certificate is in the store once the reload commits, before the
// listener serves.
func (s *certStore) listenWith(key string, t config.TLS, l net.Listener) net.Listener {
	if !t.Enabled() {
		return l
	}
	return s.wrap(key, l)
}

func (s *certStore) wrap(key string, l net.Listener) net.Listener {
	return tls.NewListener(l, &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s.mu.RLock()
			defer s.mu.RUnlock()
			if c := s.certs[key]; c != nil {
				return c, nil
			}
			return nil, fmt.Errorf("no certificate for %s", key)
		},
	})
}
