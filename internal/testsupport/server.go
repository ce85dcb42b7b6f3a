package testsupport

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"
)

// service is one HTTP server on a fixed 127.0.0.1 address that can be
// stopped and started again: a registry, its token issuer, its blob CDN or
// a front. The address is reserved once so that whatever a client learnt
// (a realm, a redirect Location) still points at it after a restart.
//
// A service is not safe for concurrent use; its owner serialises start and
// stop.
type service struct {
	addr string
	tls  *tls.Config // nil serves plain HTTP
	gen  *generation // nil while stopped
}

// generation is one start..stop period of a service.
type generation struct {
	srv      *http.Server
	cancel   context.CancelFunc
	served   chan struct{}
	serveErr error

	mu       sync.Mutex
	inflight int
	closing  bool
	idle     chan struct{}
}

func newService(tlsConf *tls.Config) (*service, error) {
	addr, err := pickAddr()
	if err != nil {
		return nil, fmt.Errorf("reserve a port: %w", err)
	}
	return &service{addr: addr, tls: tlsConf}, nil
}

func (s *service) scheme() string {
	if s.tls != nil {
		return "https"
	}
	return "http"
}

// url is the service's base URL with host, which is "127.0.0.1" or a name
// for it; see namedURL.
func (s *service) url(host string) string {
	_, port, _ := net.SplitHostPort(s.addr)
	return s.scheme() + "://" + net.JoinHostPort(host, port)
}

// namedURL is the base URL under the name "localhost" rather than the IP.
//
// Realms and redirect targets on another host are given by name on purpose.
// Real registries send clients to other domains (auth.docker.io, a CDN, a
// regional backend), and clients treat those differently from the host
// they started on: net/http drops Authorization when a redirect leaves the
// hostname (ports do not count), and go-containerregistry refuses a token
// realm that is an IP literal in a private or loopback range unless it is
// the registry's own host:port. "localhost" keeps both behaviours as they
// are in production while every byte still goes to 127.0.0.1.
func (s *service) namedURL() string { return s.url("localhost") }

func (s *service) running() bool { return s.gen != nil }

// start serves h; it is a no-op while serving.
func (s *service) start(h http.Handler) error {
	if s.gen != nil {
		return nil
	}
	ln, err := listenRetry(s.addr)
	if err != nil {
		return err
	}
	// Request contexts derive from ctx so that stop can release handlers
	// parked on them (e.g. Faults' BlackHole) instead of leaking them.
	ctx, cancel := context.WithCancel(context.Background())
	g := &generation{
		cancel: cancel,
		served: make(chan struct{}),
		idle:   make(chan struct{}),
	}
	g.srv = &http.Server{
		Handler:           g.track(h),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 10 * time.Second,
		// Clients such as go-containerregistry probe https before http on
		// loopback addresses; the resulting handshake errors are expected
		// and would only clutter test output.
		ErrorLog: log.New(io.Discard, "", 0),
		// Each server gets its own copy: ServeTLS adds HTTP/2 to it.
		TLSConfig: s.tls.Clone(),
	}
	go func() {
		defer close(g.served)
		var err error
		if s.tls != nil {
			err = g.srv.ServeTLS(ln, "", "")
		} else {
			err = g.srv.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			g.serveErr = err
		}
	}()
	s.gen = g
	return nil
}

// stop closes the listener and every connection, so clients see
// "connection refused" until the next start, then waits up to stopTimeout
// for handlers to return. It is a no-op while stopped.
func (s *service) stop() error {
	g := s.gen
	if g == nil {
		return nil
	}
	s.gen = nil

	// Close first so that clients retrying a dropped request meet a closed
	// port rather than a server that is going away; then release handlers
	// parked on their request context.
	_ = g.srv.Close()
	g.cancel()
	<-g.served
	var errs []error
	if g.serveErr != nil {
		errs = append(errs, fmt.Errorf("%s stopped serving: %w", s.addr, g.serveErr))
	}
	if !g.drain(stopTimeout) {
		errs = append(errs, fmt.Errorf("%s: handlers still running %v after stop", s.addr, stopTimeout))
	}
	return errors.Join(errs...)
}

// track counts running handlers so stop can wait for them: http.Server's
// Close does not, and a handler outliving its test trips leak checks and
// may touch a deleted TempDir.
func (g *generation) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		g.mu.Lock()
		if g.closing {
			g.mu.Unlock()
			panic(http.ErrAbortHandler)
		}
		g.inflight++
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.inflight--
			if g.closing && g.inflight == 0 {
				close(g.idle)
			}
			g.mu.Unlock()
		}()
		h.ServeHTTP(w, req)
	})
}

// drain stops admitting handlers and waits up to d for running ones.
func (g *generation) drain(d time.Duration) bool {
	g.mu.Lock()
	g.closing = true
	if g.inflight == 0 {
		close(g.idle)
	}
	g.mu.Unlock()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-g.idle:
		return true
	case <-timer.C:
		return false
	}
}

// ociError writes an OCI distribution-spec error body.
func ociError(w http.ResponseWriter, status int, code, message string) {
	body, err := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
