package testinfra

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"
)

// Service is one HTTP server on a fixed 127.0.0.1 address that can be
// stopped and started again: a registry, its token issuer, its blob CDN or
// a front. The address is reserved once so that whatever a client learnt
// (a realm, a redirect Location) still points at it after a restart.
//
// A Service is not safe for concurrent use; its owner serialises Start and
// Stop.
type Service struct {
	addr string
	tls  *tls.Config // nil serves plain HTTP
	gen  *generation // nil while stopped
}

// StopTimeout bounds how long Stop waits for handlers to return. Handlers
// see a cancelled context and closed connections at that point, so only a
// genuinely stuck handler (a bug worth failing a test for) takes longer.
const StopTimeout = 10 * time.Second

// generation is one Start..Stop period of a Service.
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

// NewService picks a free 127.0.0.1 address for a server that is not
// serving yet; tlsConf nil serves plain HTTP.
func NewService(tlsConf *tls.Config) (*Service, error) {
	addr, err := PickAddr()
	if err != nil {
		return nil, fmt.Errorf("reserve a port: %w", err)
	}
	return &Service{addr: addr, tls: tlsConf}, nil
}

// Addr is the service's "127.0.0.1:port".
func (s *Service) Addr() string { return s.addr }

func (s *Service) scheme() string {
	if s.tls != nil {
		return "https"
	}
	return "http"
}

// URL is the service's base URL with host, which is "127.0.0.1" or a name
// for it; see NamedURL.
func (s *Service) URL(host string) string {
	_, port, _ := net.SplitHostPort(s.addr)
	return s.scheme() + "://" + net.JoinHostPort(host, port)
}

// NamedURL is the base URL under the name "localhost" rather than the IP.
//
// Realms and redirect targets on another host are given by name on purpose.
// Real registries send clients to other domains (auth.docker.io, a CDN, a
// regional backend), and clients treat those differently from the host
// they started on: net/http drops Authorization when a redirect leaves the
// hostname (ports do not count), and go-containerregistry refuses a token
// realm that is an IP literal in a private or loopback range unless it is
// the registry's own host:port. "localhost" keeps both behaviours as they
// are in production while every byte still goes to 127.0.0.1.
func (s *Service) NamedURL() string { return s.URL("localhost") }

// Running says whether the service is serving.
func (s *Service) Running() bool { return s.gen != nil }

// Start serves h; it is a no-op while serving.
func (s *Service) Start(h http.Handler) error {
	if s.gen != nil {
		return nil
	}
	ln, err := listenRetry(s.addr)
	if err != nil {
		return err
	}
	// Request contexts derive from ctx so that Stop can release handlers
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

// Stop closes the listener and every connection, so clients see
// "connection refused" until the next Start, then waits up to StopTimeout
// for handlers to return. It is a no-op while stopped.
func (s *Service) Stop() error {
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
	if !g.drain(StopTimeout) {
		errs = append(errs, fmt.Errorf("%s: handlers still running %v after stop", s.addr, StopTimeout))
	}
	return errors.Join(errs...)
}

// track counts running handlers so Stop can wait for them: http.Server's
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
