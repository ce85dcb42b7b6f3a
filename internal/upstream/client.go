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
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

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

// Options configures a Client.
type Options struct {
	Name     string
	Remote   string
	Username string
	Password string
	CAFile   string
	Timeout  time.Duration
	// UserAgent is sent with every upstream request.
	UserAgent string
	// Observe, if set, is told about every request sent upstream (token
	// requests and redirect hops included).
	Observe func(method string, status int, d time.Duration, h http.Header, err error)
	// Redirected, if set, is told about every redirect followed.
	Redirected func()
	// AllowHops, when not empty, replaces the default hop policy: a
	// redirect target or token realm may then dial only addresses inside
	// these prefixes (see HopPolicy).
	AllowHops []netip.Prefix
	// Refused, if set, is told about every hop the policy refused, by host
	// (never a URL: its query may hold a signature) and reason.
	Refused func(host, reason string)
}

// Client is the upstream side of one proxied registry.
type Client struct {
	name       string
	remote     *url.URL
	auth       *authorizer
	base       *http.Transport   // the connections, closed by Close
	transport  http.RoundTripper // base with refusals and observer reporting
	timeout    time.Duration
	ua         string
	redirected func()
	hops       *HopPolicy
	refused    func(host, reason string)
}

// New builds a Client. It does not contact the upstream.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.Remote)
	if err != nil {
		return nil, fmt.Errorf("parse remote %q: %w", o.Remote, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("remote %q: want http(s)://host[:port]", o.Remote)
	}
	hops := NewHopPolicy(u, o.AllowHops)
	base, err := newTransport(o.CAFile, o.Timeout, hops)
	if err != nil {
		return nil, err
	}
	if o.UserAgent == "" {
		o.UserAgent = "multiproxy"
	}
	c := &Client{
		name:       o.Name,
		remote:     u,
		base:       base,
		timeout:    o.Timeout,
		ua:         o.UserAgent,
		redirected: o.Redirected,
		hops:       hops,
		refused:    o.Refused,
	}
	if c.refused == nil {
		c.refused = func(string, string) {}
	}
	c.transport = refusals{next: base, refused: c.refused}
	if o.Observe != nil {
		c.transport = observer{next: c.transport, observe: o.Observe}
	}
	if c.redirected == nil {
		c.redirected = func() {}
	}
	c.auth = newAuthorizer(u, o.Username, o.Password, c.transport, o.UserAgent, o.Timeout)
	c.auth.refused = c.refused
	return c, nil
}

// Name is the upstream's configured name.
func (c *Client) Name() string { return c.name }

// Timeout is the bound on every upstream wait.
func (c *Client) Timeout() time.Duration { return c.timeout }

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
	req.Header.Set("User-Agent", c.ua)
	resp, err := c.transport.RoundTrip(req)
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

// endpoint is the upstream URL of an API path, which may carry a query.
func (c *Client) endpoint(path string) string {
	u := *c.remote
	u.Path, u.RawQuery, _ = strings.Cut(path, "?")
	return u.String()
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
	resp, cancel, err := c.headers(ctx, "head manifest", http.MethodHead, repo, "/v2/"+repo+"/manifests/"+ref, ManifestAccept)
	if err != nil {
		return ManifestInfo{}, err
	}
	defer cancel()
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
// against it. The returned digest is always computed from the bytes. The
// whole exchange, body included, is bounded by the upstream timeout: a
// manifest is small.
func (c *Client) GetManifest(ctx context.Context, repo, ref string) ([]byte, ManifestInfo, error) {
	ctx, cancelAll := context.WithTimeout(ctx, 2*c.timeout)
	defer cancelAll()
	resp, cancel, err := c.headers(ctx, "get manifest", http.MethodGet, repo, "/v2/"+repo+"/manifests/"+ref, ManifestAccept)
	if err != nil {
		return nil, ManifestInfo{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, ManifestInfo{}, statusError("get manifest", resp)
	}
	body, err := readSmall(resp, "get manifest", MaxManifestSize)
	if err != nil {
		return nil, ManifestInfo{}, err
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

// HeadBlob asks for a blob's size without downloading it. A HEAD that is
// redirected is followed like a GET: the object store answers it.
func (c *Client) HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	resp, cancel, err := c.headers(ctx, "head blob", http.MethodHead, repo, "/v2/"+repo+"/blobs/"+d.String(), nil)
	if err != nil {
		return 0, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError("head blob", resp)
	}
	if resp.ContentLength < 0 {
		return 0, &Error{Op: "head blob", Cause: CauseBadContent, Err: errors.New("no Content-Length")}
	}
	return resp.ContentLength, nil
}

// GetBlob starts a blob download. The wait for headers is bounded by the
// upstream timeout, and so is each read of the body: a stalled upstream ends
// the body with an error instead of hanging the fill. ctx bounds the whole
// download.
func (c *Client) GetBlob(ctx context.Context, repo string, d digest.Digest) (*http.Response, error) {
	return c.GetBlobFrom(ctx, repo, d, 0)
}

// GetBlobFrom is GetBlob for the bytes from offset on, so a fill that lost
// its source mid-blob need not fetch again what it has: with offset > 0 it
// sends Range: bytes=<offset>-. The answer is a 206, which the caller must
// check against offset (its Content-Range), or a 200 with the whole blob
// from an upstream that ignores ranges.
func (c *Client) GetBlobFrom(ctx context.Context, repo string, d digest.Digest, offset int64) (*http.Response, error) {
	rng := ""
	if offset > 0 {
		rng = "bytes=" + strconv.FormatInt(offset, 10) + "-"
	}
	resp, cancel, err := c.headersRange(ctx, "get blob", http.MethodGet, repo, "/v2/"+repo+"/blobs/"+d.String(), nil, rng)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && (offset == 0 || resp.StatusCode != http.StatusPartialContent) {
		defer cancel()
		defer resp.Body.Close()
		// The error's body is read for a snippet, past the headers'
		// bound: without one of its own, a drip-fed 404 would hold the
		// fill, and every client of it, for minutes.
		cut := time.AfterFunc(c.timeout, cancel)
		defer cut.Stop()
		return nil, statusError("get blob", resp)
	}
	resp.Body = IdleBody(resp.Body, c.timeout, cancel)
	return resp, nil
}

// readSmall reads a body that is small by nature (a manifest, a list),
// refusing one larger than limit rather than holding it in memory.
func readSmall(resp *http.Response, op string, limit int64) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, classify(op, err)
	}
	if int64(len(body)) > limit {
		return nil, &Error{Op: op, Cause: CauseBadContent, Err: fmt.Errorf("body larger than %d bytes", limit)}
	}
	return body, nil
}

func mediaType(h http.Header) string {
	ct := h.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.TrimSpace(ct)
}

// GetReferrers fetches the OCI referrers index of digest d in repo, from the
// upstream's referrers API, re-encoded from what ParseReferrers read. A 404
// means the upstream has no such API (or nothing is known of d); the caller
// then tries the tag schema.
func (c *Client) GetReferrers(ctx context.Context, repo string, d digest.Digest) ([]byte, error) {
	ctx, cancelAll := context.WithTimeout(ctx, 2*c.timeout)
	defer cancelAll()
	resp, cancel, err := c.headers(ctx, "get referrers", http.MethodGet, repo, "/v2/"+repo+"/referrers/"+d.String(),
		[]string{"application/vnd.oci.image.index.v1+json"})
	if err != nil {
		return nil, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError("get referrers", resp)
	}
	body, err := readSmall(resp, "get referrers", MaxManifestSize)
	if err != nil {
		return nil, err
	}
	return ParseReferrers(body)
}
