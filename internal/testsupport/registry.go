package testsupport

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	// The registry finds its storage driver and access controller through
	// init-time registration, so the implementations we configure must be
	// linked in explicitly.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// RegistryOptions configures a test registry.
type RegistryOptions struct {
	// Username and Password, when Username is non-empty, enable htpasswd
	// basic auth: anonymous requests get 401 with a Basic challenge.
	Username, Password string
	// TLS serves HTTPS with a certificate from a freshly generated CA; the
	// CA's PEM is at CAFile().
	TLS bool
	// Wrap, if set, wraps the registry handler, typically (*Faults).Wrap.
	// It is called on every Start.
	Wrap func(http.Handler) http.Handler
}

// stopTimeout bounds how long Stop waits for handlers to return. Handlers
// see a cancelled context and closed connections at that point, so only a
// genuinely stuck handler (a bug worth failing the test for) takes longer.
const stopTimeout = 10 * time.Second

var quietLogs sync.Once

// quietDistributionLogs keeps distribution's global logrus logger from
// flooding test output. WarnLevel alone is not enough: the registry logs
// every 4xx response at error level, and pushes routinely produce 404s
// (go-containerregistry checks for each blob with HEAD before uploading)
// and 401s (auth challenges). Those are filtered out; 5xx responses and
// genuine errors still show.
func quietDistributionLogs() {
	logrus.SetLevel(logrus.WarnLevel)
	logrus.SetFormatter(expectedNoiseFilter{next: logrus.StandardLogger().Formatter})
}

type expectedNoiseFilter struct{ next logrus.Formatter }

func (f expectedNoiseFilter) Format(e *logrus.Entry) ([]byte, error) {
	switch {
	case e.Message == "response completed with error":
		if status := fmt.Sprint(e.Data["http.response.status"]); len(status) == 3 && status[0] == '4' {
			return nil, nil
		}
	case strings.HasPrefix(e.Message, "error authorizing context"):
		return nil, nil
	}
	return f.next.Format(e)
}

// Registry is a real distribution registry on 127.0.0.1 whose storage
// (filesystem, in t.TempDir()) survives Stop/Start on the same address.
type Registry struct {
	t            testing.TB
	opts         RegistryOptions
	addr         string
	rootDir      string
	htpasswdPath string
	secret       string
	pki          *testPKI
	caFile       string
	transport    *http.Transport

	mu  sync.Mutex
	gen *generation // nil while stopped
}

// generation is one Start..Stop period. A fresh App per generation means a
// restarted registry has no in-memory state left over, just like a
// restarted process; only what reached the filesystem survives.
type generation struct {
	app      *handlers.App
	srv      *http.Server
	cancel   context.CancelFunc
	served   chan struct{}
	serveErr error

	mu       sync.Mutex
	inflight int
	closing  bool
	idle     chan struct{}
}

// NewRegistry prepares a registry on a free 127.0.0.1 port without serving
// yet, so tests can hand its address to the code under test first or check
// behaviour against an upstream that is down. Stop is registered with
// t.Cleanup.
func NewRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	quietLogs.Do(quietDistributionLogs)

	// TempDir is requested before Cleanup(Stop) is registered: cleanups
	// run last-in first-out, so the registry stops before its storage is
	// deleted underneath it.
	dir := t.TempDir()
	r := &Registry{
		t:       t,
		opts:    opts,
		rootDir: filepath.Join(dir, "storage"),
		secret:  randomHex(16),
	}

	addr, err := pickAddr()
	if err != nil {
		t.Fatalf("testsupport: reserve registry port: %v", err)
	}
	r.addr = addr

	if opts.Username != "" {
		// MinCost because the access controller runs bcrypt on every
		// request; the default cost would dominate test run time.
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("testsupport: hash password: %v", err)
		}
		r.htpasswdPath = filepath.Join(dir, "htpasswd")
		line := opts.Username + ":" + string(hash) + "\n"
		if err := os.WriteFile(r.htpasswdPath, []byte(line), 0o600); err != nil {
			t.Fatalf("testsupport: write htpasswd: %v", err)
		}
	}

	// No proxy: test traffic must never leave 127.0.0.1, whatever the
	// environment says.
	r.transport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	if opts.TLS {
		pki, err := newTestPKI()
		if err != nil {
			t.Fatalf("testsupport: generate TLS material: %v", err)
		}
		r.pki = pki
		r.caFile = filepath.Join(dir, "ca.pem")
		if err := os.WriteFile(r.caFile, pki.caPEM, 0o600); err != nil {
			t.Fatalf("testsupport: write CA file: %v", err)
		}
		r.transport.TLSClientConfig = &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12}
	}

	t.Cleanup(r.Stop)
	return r
}

// StartRegistry is NewRegistry followed by Start.
func StartRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	r := NewRegistry(t, opts)
	r.Start()
	return r
}

// Start serves on the registry's address, again if it was stopped. It is a
// no-op while already serving. It calls t.Fatal on failure, so call it from
// the test goroutine.
func (r *Registry) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != nil {
		return
	}

	app, err := newApp(r.config())
	if err != nil {
		r.t.Fatalf("testsupport: %v", err)
	}
	ln, err := listenRetry(r.addr)
	if err != nil {
		_ = app.Shutdown()
		r.t.Fatalf("testsupport: start registry: %v", err)
	}

	// Request contexts derive from ctx so that Stop can release handlers
	// parked on them (e.g. Faults' BlackHole) instead of leaking them.
	ctx, cancel := context.WithCancel(context.Background())
	g := &generation{
		app:    app,
		cancel: cancel,
		served: make(chan struct{}),
		idle:   make(chan struct{}),
	}
	var h http.Handler = app
	if r.opts.Wrap != nil {
		h = r.opts.Wrap(h)
	}
	g.srv = &http.Server{
		Handler:           g.track(h),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 10 * time.Second,
		// Clients such as go-containerregistry probe https before http on
		// loopback addresses; the resulting handshake errors are expected
		// and would only clutter test output.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	if r.pki != nil {
		g.srv.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{r.pki.server},
			MinVersion:   tls.VersionTLS12,
		}
	}
	go func() {
		defer close(g.served)
		var err error
		if r.pki != nil {
			err = g.srv.ServeTLS(ln, "", "")
		} else {
			err = g.srv.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			g.serveErr = err
		}
	}()
	r.gen = g
}

// Stop closes the listener and every connection, so clients see
// "connection refused" until the next Start, then waits for all handlers to
// return. It is idempotent and safe to call from any goroutine.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.gen
	if g == nil {
		return
	}
	r.gen = nil

	// Close first so that clients retrying a dropped request meet a closed
	// port rather than a server that is going away; then release handlers
	// parked on their request context.
	_ = g.srv.Close()
	g.cancel()
	<-g.served
	if g.serveErr != nil {
		r.t.Errorf("testsupport: registry %s stopped serving: %v", r.addr, g.serveErr)
	}
	if !g.drain(stopTimeout) {
		r.t.Errorf("testsupport: registry %s: handlers still running %v after Stop", r.addr, stopTimeout)
	}
	// Exactly once per App: a second Shutdown panics.
	if err := g.app.Shutdown(); err != nil {
		r.t.Errorf("testsupport: shut down registry app: %v", err)
	}
	// Pooled connections point at a server that no longer exists.
	r.transport.CloseIdleConnections()
}

// URL is the registry's base URL, "http://127.0.0.1:port" or
// "https://127.0.0.1:port".
func (r *Registry) URL() string {
	if r.pki != nil {
		return "https://" + r.addr
	}
	return "http://" + r.addr
}

// Host is "127.0.0.1:port", the registry part of an image reference.
func (r *Registry) Host() string { return r.addr }

// CAFile is the path of the PEM CA certificate that signed the registry's
// certificate, or "" without TLS.
func (r *Registry) CAFile() string { return r.caFile }

// CertPool holds the registry's CA, or is nil without TLS.
func (r *Registry) CertPool() *x509.CertPool {
	if r.pki == nil {
		return nil
	}
	return r.pki.pool
}

// Ref returns Host()+"/"+s, e.g. Ref("library/busybox:1") or
// Ref("app@sha256:...").
func (r *Registry) Ref(repoAndTagOrDigest string) string {
	return r.addr + "/" + repoAndTagOrDigest
}

// BlobURL is the URL of a blob in repo; handy for raw HTTP checks.
func (r *Registry) BlobURL(repo, digest string) string {
	return r.URL() + "/v2/" + repo + "/blobs/" + digest
}

// HTTPClient returns a client that trusts the registry's CA and never uses
// a proxy. It carries no credentials. Each call returns a new client
// sharing one transport, so callers may set Timeout on it freely.
func (r *Registry) HTTPClient() *http.Client {
	return &http.Client{Transport: r.transport}
}

// RemoteOptions lets go-containerregistry push to and pull from this
// registry directly: credentials if configured, and a transport trusting
// the registry's CA.
func (r *Registry) RemoteOptions() []remote.Option {
	var auth authn.Authenticator = authn.Anonymous
	if r.opts.Username != "" {
		auth = &authn.Basic{Username: r.opts.Username, Password: r.opts.Password}
	}
	return []remote.Option{remote.WithAuth(auth), remote.WithTransport(r.transport)}
}

// config is rebuilt for every App because NewApp mutates the configuration
// it is given (storage parameters, validation flags).
func (r *Registry) config() *configuration.Configuration {
	cfg := &configuration.Configuration{
		Version: configuration.MajorMinorVersion(0, 1),
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": r.rootDir},
			// Tests delete tags and manifests upstream to simulate
			// upstream changes.
			"delete":   configuration.Parameters{"enabled": true},
			"redirect": configuration.Parameters{"disable": true},
			// The purger would otherwise start a goroutine per App that
			// walks storage after a random delay. NewApp insists on
			// map[any]any here.
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
			},
		},
	}
	cfg.HTTP.Addr = r.addr
	// Fixed for the registry's lifetime so upload session state signed by
	// one generation stays valid after a restart.
	cfg.HTTP.Secret = r.secret
	if r.htpasswdPath != "" {
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{
			"realm": "multiproxy-testsupport",
			"path":  r.htpasswdPath,
		}}
	}
	return cfg
}

// newApp turns NewApp's setup panics into errors so a bad configuration
// fails the test with a message instead of crashing the binary.
func newApp(cfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("distribution registry setup: %v", p)
		}
	}()
	return handlers.NewApp(context.Background(), cfg), nil
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

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// LeakIgnores lists goleak options for goroutines the registry leaves
// behind by design, for tests that check for goroutine leaks:
// distribution's App starts a notification broadcaster per instance that
// App.Shutdown never stops, so each Start leaves one idle goroutine.
func LeakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"),
	}
}
