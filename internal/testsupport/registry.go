package testsupport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
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
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/middleware/redirect"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// RegistryOptions configures a test registry.
type RegistryOptions struct {
	// Username and Password, when Username is non-empty, enable htpasswd
	// basic auth: anonymous requests get 401 with a Basic challenge. With
	// Token, they are instead the only credentials the token issuer
	// accepts, and anonymous token requests get 401.
	Username, Password string
	// TLS serves HTTPS with a certificate from a freshly generated CA; the
	// CA's PEM is at CAFile(). The token issuer and the CDN serve HTTPS
	// too, with the same CA.
	TLS bool
	// Wrap, if set, wraps the registry handler, typically (*Faults).Wrap.
	// It is called on every Start.
	Wrap func(http.Handler) http.Handler

	// Token replaces basic auth with bearer tokens: distribution's token
	// access controller, and a TokenIssuer on its own port (Tokens()).
	Token bool
	// TokenTTL is the lifetime of issued tokens, 5 minutes if zero,
	// rounded up to whole seconds. The registry refuses a token within a
	// second of its expiry rather than after the 60 s of leeway
	// distribution's verifier adds, so tests of token renewal need not
	// wait a minute.
	TokenTTL time.Duration
	// WrapTokens, if set, wraps the token issuer's handler (e.g. with a
	// Faults of its own).
	WrapTokens func(http.Handler) http.Handler

	// CDN makes the registry redirect blob GETs and HEADs (307) to a
	// separate blob server with signed, expiring URLs (CDN()).
	CDN bool
	// CDNURLTTL is how long a redirect URL stays valid, 60 s if zero.
	CDNURLTTL time.Duration
	// WrapCDN, if set, wraps the CDN's handler, inside its request
	// recording.
	WrapCDN func(http.Handler) http.Handler
}

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
	// A client's invalid digest, answered 400; and a sha512 blob found
	// under its canonical sha256 name, as designed.
	case strings.HasPrefix(e.Message, "error parsing digest="),
		strings.HasPrefix(e.Message, "looking up blob with canonical target"):
		return nil, nil
	}
	return f.next.Format(e)
}

// Registry is a real distribution registry on 127.0.0.1 whose storage
// (filesystem, in t.TempDir()) survives Stop/Start on the same address.
// With Token or CDN, its token issuer and CDN are part of it: they stop and
// start with it, on ports of their own that also stay the same, and keep
// their keys, so tokens and URLs handed out before a restart stay valid.
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
	tokens       *TokenIssuer // nil without Token
	cdn          *CDN         // nil without CDN

	mu  sync.Mutex
	svc *testinfra.Service
	// app is nil while stopped. A fresh App per Start means a restarted
	// registry has no in-memory state left over, just like a restarted
	// process; only what reached the filesystem survives.
	app *handlers.App
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
		secret:  testinfra.RandomHex(16),
	}

	if opts.Username != "" && !opts.Token {
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
	var serverTLS *tls.Config
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
		serverTLS = &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12}
	}

	svc, err := testinfra.NewService(serverTLS)
	if err != nil {
		t.Fatalf("testsupport: registry: %v", err)
	}
	r.svc, r.addr = svc, svc.Addr()
	if opts.Token {
		r.tokens, err = testinfra.NewTokenIssuer(testinfra.TokenOptions{Dir: dir, TTL: opts.TokenTTL,
			Username: opts.Username, Password: opts.Password, Wrap: opts.WrapTokens, TLS: serverTLS})
		if err != nil {
			t.Fatalf("testsupport: %v", err)
		}
	}
	if opts.CDN {
		r.cdn, err = testinfra.NewCDN(testinfra.CDNOptions{Root: r.rootDir, URLTTL: opts.CDNURLTTL, Wrap: opts.WrapCDN, TLS: serverTLS})
		if err != nil {
			t.Fatalf("testsupport: %v", err)
		}
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

// Start serves on the registry's address (and the token issuer's and
// CDN's), again if it was stopped. It is a no-op while already serving. It
// calls t.Fatal on failure, so call it from the test goroutine.
func (r *Registry) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.svc.Running() {
		return
	}

	app, err := newApp(r.config())
	if err != nil {
		r.t.Fatalf("testsupport: %v", err)
	}
	var h http.Handler = r.edge(app)
	if r.opts.Wrap != nil {
		h = r.opts.Wrap(h)
	}
	// The registry's port opens last, so a client that reaches it finds
	// the hosts it is sent on to already up.
	if r.cdn != nil {
		err = r.cdn.Start()
	}
	if err == nil && r.tokens != nil {
		err = r.tokens.Start()
	}
	if err == nil {
		err = r.svc.Start(h)
	}
	if err != nil {
		r.app = app
		r.stopLocked()
		r.t.Fatalf("testsupport: start registry: %v", err)
	}
	r.app = app
}

// Stop closes the listeners (the registry's, the token issuer's and the
// CDN's) and every connection, so clients see "connection refused" until
// the next Start, then waits for all handlers to return. It is idempotent
// and safe to call from any goroutine.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.app == nil {
		return
	}
	r.stopLocked()
}

func (r *Registry) stopLocked() {
	if err := r.svc.Stop(); err != nil {
		r.t.Errorf("testsupport: registry: %v", err)
	}
	// Exactly once per App: a second Shutdown panics.
	if err := r.app.Shutdown(); err != nil {
		r.t.Errorf("testsupport: shut down registry app: %v", err)
	}
	r.app = nil
	if r.tokens != nil {
		if err := r.tokens.Stop(); err != nil {
			r.t.Errorf("testsupport: token issuer: %v", err)
		}
	}
	if r.cdn != nil {
		if err := r.cdn.Stop(); err != nil {
			r.t.Errorf("testsupport: CDN: %v", err)
		}
	}
	// Pooled connections point at servers that no longer exist.
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

// Tokens is the registry's token issuer, or nil without Token.
func (r *Registry) Tokens() *TokenIssuer { return r.tokens }

// CDN is the registry's blob server, or nil without CDN.
func (r *Registry) CDN() *CDN { return r.cdn }

// RemoteOptions lets go-containerregistry push to and pull from this
// registry directly: credentials that may push (the configured user, or
// with Token and no user the issuer's internal pusher account), and a
// transport trusting the registry's CA.
func (r *Registry) RemoteOptions() []remote.Option {
	var auth authn.Authenticator = authn.Anonymous
	switch {
	case r.opts.Username != "":
		auth = &authn.Basic{Username: r.opts.Username, Password: r.opts.Password}
	case r.tokens != nil:
		u, p := r.tokens.Credentials()
		auth = &authn.Basic{Username: u, Password: p}
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
			"delete": configuration.Parameters{"enabled": true},
			// The purger would otherwise start a goroutine per App that
			// walks storage after a random delay. NewApp insists on
			// map[any]any here.
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
			},
		},
	}
	// Docker Hub takes manifests whose non-distributable layers are named
	// by URL (Windows base images); distribution refuses every URL unless
	// told which to allow.
	cfg.Validation.Manifests.URLs.Allow = []string{"^https?://"}
	cfg.HTTP.Addr = r.addr
	// Fixed for the registry's lifetime so upload session state signed by
	// one generation stays valid after a restart.
	cfg.HTTP.Secret = r.secret
	if r.cdn != nil {
		// The middleware turns a blob's storage path into baseurl + path
		// (path.Join, so the storage layout shows through), and the
		// registry answers GET and HEAD on the blob with 307 to it.
		cfg.Middleware = map[string][]configuration.Middleware{"storage": {{
			Name:    "redirect",
			Options: configuration.Parameters{"baseurl": r.cdn.URL() + "/"},
		}}}
	} else {
		cfg.Storage["redirect"] = configuration.Parameters{"disable": true}
	}
	switch {
	case r.tokens != nil:
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":          r.tokens.URL(),
			"service":        r.tokens.Service(),
			"issuer":         r.tokens.Issuer(),
			"rootcertbundle": r.tokens.RootFile(),
		}}
	case r.htpasswdPath != "":
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{
			"realm": "multiproxy-testsupport",
			"path":  r.htpasswdPath,
		}}
	}
	return cfg
}

// edge makes the registry's answers what a client of the real registries
// gets, where distribution's differ: redirects to the CDN carry a
// signature, and an expired token is refused when it expires, not a minute
// later (distribution's verifier allows 60 s of clock skew, which would
// hide a client that keeps using expired tokens).
func (r *Registry) edge(next http.Handler) http.Handler {
	if r.tokens == nil && r.cdn == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ew := &edgeWriter{ResponseWriter: w, cdn: r.cdn}
		if r.tokens != nil {
			// exp counts whole seconds from a truncated issue time, so a
			// token is honoured for at least TTL and under TTL+1s.
			if exp, ok := bearerExpiry(req); ok && !time.Now().Before(exp.Add(time.Second)) {
				req = req.Clone(req.Context())
				req.Header.Del("Authorization")
				ew.expired = true
			}
		}
		next.ServeHTTP(ew, req)
	})
}

type edgeWriter struct {
	http.ResponseWriter
	cdn     *CDN
	expired bool
	wrote   bool
}

func (e *edgeWriter) WriteHeader(code int) {
	if !e.wrote {
		e.wrote = true
		h := e.Header()
		if loc := h.Get("Location"); code == http.StatusTemporaryRedirect && e.cdn != nil && loc != "" {
			h.Set("Location", e.cdn.Sign(loc))
		}
		// With the token removed distribution challenges as for a
		// request without one; real registries say why.
		if c := h.Get("WWW-Authenticate"); code == http.StatusUnauthorized && e.expired && c != "" && !strings.Contains(c, "error=") {
			h.Set("WWW-Authenticate", c+`,error="invalid_token"`)
		}
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *edgeWriter) Write(p []byte) (int, error) {
	e.wrote = true
	return e.ResponseWriter.Write(p)
}

func (e *edgeWriter) Unwrap() http.ResponseWriter { return e.ResponseWriter }

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

// LeakIgnores lists goleak options for goroutines the registry leaves
// behind by design, for tests that check for goroutine leaks:
// distribution's App starts a notification broadcaster per instance that
// App.Shutdown never stops, so each Start leaves one idle goroutine.
func LeakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"),
	}
}
