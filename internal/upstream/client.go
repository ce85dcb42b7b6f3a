// Package upstream talks to one remote registry on behalf of the cache: it owns
// the per-upstream HTTP transport (custom CA, dial and header timeouts, an idle
// timeout on bodies), registry authentication with token reuse, and the
// mapping of upstream answers to typed errors the cache can reason about
// (unreachable, rate limited, not found, ...).
//
// Nothing here retries: a pull must never hang on the cache, so every wait is
// bounded by the upstream's timeout and failures are returned at once for the
// caller to decide between a stale serve and an error.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
)

// ManifestAccept lists every manifest media type the cache can store.
var ManifestAccept = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// MaxManifestSize bounds a manifest body; distribution itself refuses larger ones.
const MaxManifestSize = 4 << 20

// maxRepoTransports bounds the per-repository auth transports kept for token reuse.
const maxRepoTransports = 512

// Options configures a Client.
type Options struct {
	Name     string
	Remote   string
	Username string
	Password string
	CAFile   string
	Timeout  time.Duration
	// Observe, if set, is told about every request sent upstream.
	Observe func(method string, status int, d time.Duration, h http.Header, err error)
}

// Client is the upstream side of one proxied registry.
type Client struct {
	name    string
	remote  *url.URL
	reg     name.Registry
	auth    authn.Authenticator
	base    *http.Transport
	rt      http.RoundTripper
	timeout time.Duration

	mu    sync.Mutex
	repos map[string]*repoEntry
	tick  uint64
}

type repoEntry struct {
	rt   http.RoundTripper
	used uint64
}

// New builds a Client. It does not contact the upstream.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.Remote)
	if err != nil {
		return nil, fmt.Errorf("parse remote %q: %w", o.Remote, err)
	}
	var nopts []name.Option
	if u.Scheme == "http" {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("registry host %q: %w", u.Host, err)
	}
	base, err := newTransport(o.CAFile, o.Timeout)
	if err != nil {
		return nil, err
	}
	var a authn.Authenticator = authn.Anonymous
	if o.Username != "" {
		a = authn.FromConfig(authn.AuthConfig{Username: o.Username, Password: o.Password})
	}
	c := &Client{
		name:    o.Name,
		remote:  u,
		reg:     reg,
		auth:    a,
		base:    base,
		timeout: o.Timeout,
		repos:   map[string]*repoEntry{},
	}
	c.rt = base
	if o.Observe != nil {
		c.rt = observer{next: base, observe: o.Observe}
	}
	return c, nil
}

// newTransport is the one place upstream connections are configured: every
// wait is bounded by timeout, and a private CA is added to the system roots.
func newTransport(caFile string, timeout time.Duration) (*http.Transport, error) {
	// Clone the router's fallback, never the router itself: a process has
	// one original default transport, kept by installRouter.
	tr := installRouter().fallback.Clone()
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	tr.DialContext = countDials(dialer.DialContext)
	tr.TLSHandshakeTimeout = timeout
	tr.ResponseHeaderTimeout = timeout
	tr.ExpectContinueTimeout = time.Second
	tr.MaxIdleConnsPerHost = 32
	tr.Proxy = http.ProxyFromEnvironment
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate found", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return tr, nil
}

// dials counts outbound connection attempts by address, for any upstream,
// so tests can prove a request caused none to a given host (an ns naming no
// upstream must never be dialed).
var dials sync.Map // addr -> *atomic.Int64

// Dials is the number of outbound connections attempted so far to addresses
// for which match is true.
func Dials(match func(addr string) bool) int64 {
	var n int64
	dials.Range(func(k, v any) bool {
		if match(k.(string)) {
			n += v.(*atomic.Int64).Load()
		}
		return true
	})
	return n
}

func countDials(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, _ := dials.LoadOrStore(addr, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
		return dial(ctx, network, addr)
	}
}

// Name is the upstream's configured name.
func (c *Client) Name() string { return c.name }

// Timeout is the bound on every upstream wait.
func (c *Client) Timeout() time.Duration { return c.timeout }

// Host is the remote's host[:port].
func (c *Client) Host() string { return c.remote.Host }

// RoundTripper is the bare per-upstream transport, without registry auth. The
// embedded distribution App's own upstream calls are routed through it.
func (c *Client) RoundTripper() http.RoundTripper { return c.rt }

// Close drops idle connections.
func (c *Client) Close() { c.base.CloseIdleConnections() }

// Ping reports whether the upstream answers its API base. 200 and 401 both
// mean a registry is there.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("/v2/"), nil)
	if err != nil {
		return err
	}
	resp, err := c.rt.RoundTrip(req)
	if err != nil {
		return &Error{Op: "ping", Cause: CauseUnreachable, Err: err}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
		return nil
	}
	return statusError("ping", resp)
}

func (c *Client) endpoint(path string) string {
	u := *c.remote
	u.Path = path
	u.RawQuery = ""
	return u.String()
}

// repoTransport returns an authenticated transport scoped to pull from repo.
// Transports are kept so that a token is fetched once and reused until the
// upstream rejects it, instead of once per request as distribution's proxy does.
func (c *Client) repoTransport(ctx context.Context, repo string) (http.RoundTripper, error) {
	c.mu.Lock()
	c.tick++
	if e, ok := c.repos[repo]; ok {
		e.used = c.tick
		c.mu.Unlock()
		return e.rt, nil
	}
	c.mu.Unlock()

	scope := c.reg.Repo(repo).Scope(transport.PullScope)
	rt, err := transport.NewWithContext(ctx, c.reg, c.auth, c.rt, []string{scope})
	if err != nil {
		return nil, classify("authenticate", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.repos) >= maxRepoTransports {
		c.evictOldestLocked()
	}
	c.repos[repo] = &repoEntry{rt: rt, used: c.tick}
	return rt, nil
}

func (c *Client) evictOldestLocked() {
	var oldest string
	var min uint64 = ^uint64(0)
	for k, e := range c.repos {
		if e.used < min {
			oldest, min = k, e.used
		}
	}
	delete(c.repos, oldest)
}

// forget drops a repository's transport, e.g. after credentials were refused.
func (c *Client) forget(repo string) {
	c.mu.Lock()
	delete(c.repos, repo)
	c.mu.Unlock()
}

func (c *Client) do(ctx context.Context, op, method, repo, path string, accept []string) (*http.Response, error) {
	rt, err := c.repoTransport(ctx, repo)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path), nil)
	if err != nil {
		return nil, err
	}
	if len(accept) > 0 {
		req.Header.Set("Accept", strings.Join(accept, ", "))
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, classify(op, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		c.forget(repo)
	}
	return resp, nil
}

// ManifestInfo describes a manifest as the upstream announced it.
type ManifestInfo struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
}

// HeadManifest asks for the digest a tag (or digest) currently points at. It
// is one HEAD request, which Docker Hub does not count against pull limits.
func (c *Client) HeadManifest(ctx context.Context, repo, ref string) (ManifestInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.do(ctx, "head manifest", http.MethodHead, repo, "/v2/"+repo+"/manifests/"+ref, ManifestAccept)
	if err != nil {
		return ManifestInfo{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ManifestInfo{}, statusError("head manifest", resp)
	}
	info := ManifestInfo{MediaType: mediaType(resp.Header), Size: resp.ContentLength}
	if d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil {
		info.Digest = d
	}
	return info, nil
}

// GetManifest fetches a manifest and, when ref is a digest, verifies the bytes
// against it. The returned digest is always computed from the bytes.
func (c *Client) GetManifest(ctx context.Context, repo, ref string) ([]byte, ManifestInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.do(ctx, "get manifest", http.MethodGet, repo, "/v2/"+repo+"/manifests/"+ref, ManifestAccept)
	if err != nil {
		return nil, ManifestInfo{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, ManifestInfo{}, statusError("get manifest", resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return nil, ManifestInfo{}, classify("read manifest", err)
	}
	if len(body) > MaxManifestSize {
		return nil, ManifestInfo{}, &Error{Op: "get manifest", Cause: CauseBadContent, Err: fmt.Errorf("manifest larger than %d bytes", MaxManifestSize)}
	}
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return nil, ManifestInfo{}, &Error{Op: "get manifest", Cause: CauseBadContent, Err: fmt.Errorf("short manifest: %d of %d bytes", len(body), resp.ContentLength)}
	}
	info := ManifestInfo{MediaType: mediaType(resp.Header), Size: int64(len(body))}
	if want, err := digest.Parse(ref); err == nil {
		info.Digest = want.Algorithm().FromBytes(body)
		if info.Digest != want {
			return nil, ManifestInfo{}, &Error{Op: "get manifest", Cause: CauseBadContent, Err: fmt.Errorf("digest mismatch: want %s, got %s", want, info.Digest)}
		}
	} else {
		info.Digest = digest.FromBytes(body)
	}
	return body, info, nil
}

// GetBlob starts a blob download. The body's reads are bounded by the
// upstream timeout each: a stalled upstream ends the body with an error
// instead of hanging the fill. ctx bounds the whole download.
func (c *Client) GetBlob(ctx context.Context, repo string, d digest.Digest) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	headerCtx, headerCancel := context.WithTimeout(ctx, c.timeout)
	// The header deadline must not cut the body short: only the auth handshake
	// and the wait for headers use headerCtx's deadline, via a watchdog.
	stop := context.AfterFunc(headerCtx, func() {
		if errors.Is(headerCtx.Err(), context.DeadlineExceeded) {
			cancel()
		}
	})
	resp, err := c.do(ctx, "get blob", http.MethodGet, repo, "/v2/"+repo+"/blobs/"+d.String(), nil)
	stop()
	headerCancel()
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		return nil, statusError("get blob", resp)
	}
	resp.Body = newIdleBody(resp.Body, c.timeout, cancel)
	return resp, nil
}

func mediaType(h http.Header) string {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.TrimSpace(ct)
}

// observer reports every upstream round trip, for metrics.
type observer struct {
	next    http.RoundTripper
	observe func(method string, status int, d time.Duration, h http.Header, err error)
}

func (o observer) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := o.next.RoundTrip(req)
	if err != nil {
		o.observe(req.Method, 0, time.Since(start), nil, err)
		return nil, err
	}
	o.observe(req.Method, resp.StatusCode, time.Since(start), resp.Header, nil)
	return resp, nil
}
