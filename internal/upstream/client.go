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
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
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

// maxRedirects bounds how many redirects one upstream call follows, as
// net/http's client does.
const maxRedirects = 10

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

// maxResponseHeaderBytes bounds the headers of one upstream answer. A real
// registry's are a few KiB, a presigned Location included; net/http's
// default of 10 MiB would let 40 strangers' answers take 400 MiB.
const maxResponseHeaderBytes = 256 << 10

// newTransport is the one place upstream connections are configured: every
// wait is bounded by timeout, every dial goes through the hop policy, and a
// private CA is added to the system roots. Each upstream has a transport of
// its own; nothing process-wide is touched.
func newTransport(caFile string, timeout time.Duration, hops *HopPolicy) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = hops.dialContext(timeout)
	tr.TLSHandshakeTimeout = timeout
	tr.ResponseHeaderTimeout = timeout
	tr.ExpectContinueTimeout = time.Second
	tr.MaxIdleConnsPerHost = 32
	tr.MaxResponseHeaderBytes = maxResponseHeaderBytes
	tr.Proxy = hops.proxyFunc
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

// send makes one upstream call as a registry client must: it answers auth
// challenges (a bearer token per repository, reused until it expires) and
// follows redirects, which every real upstream uses: blobs go to a CDN or an
// object store, and registry.k8s.io redirects the API itself. The
// Authorization of a host is only ever sent to that host: a presigned
// object-store URL refuses a request that carries one.
//
// A 401 is answered once per host; a second one is returned to the caller.
//
// rng, if set, is sent as the Range header on every hop: a redirect to a
// CDN or an object store is where the bytes, and so the range, are served.
func (c *Client) send(ctx context.Context, op, method, repo, path string, accept []string, rng string) (*http.Response, error) {
	target, err := url.Parse(c.endpoint(path))
	if err != nil {
		return nil, err
	}
	answered := map[string]bool{}
	hops := 0
	for {
		req, err := http.NewRequestWithContext(ctx, method, target.String(), nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("User-Agent", c.ua)
		if len(accept) > 0 {
			req.Header.Set("Accept", strings.Join(accept, ", "))
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		if err := c.hops.checkProxied(ctx, target); err != nil {
			return nil, c.refuse(op, err)
		}
		origin := originOf(target)
		authz, err := c.auth.header(ctx, origin, repo)
		if err != nil {
			return nil, classify(op, err)
		}
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := c.transport.RoundTrip(req)
		if err != nil {
			return nil, classify(op, err)
		}
		switch {
		case resp.StatusCode == http.StatusUnauthorized && !answered[origin]:
			answered[origin] = true
			ok, err := c.auth.answer(ctx, origin, repo, resp)
			if err != nil || !ok {
				if err == nil {
					return resp, nil // no challenge we can answer: the caller sees the 401
				}
				discard(resp)
				return nil, classify(op, err)
			}
			discard(resp)
			continue
		case isRedirect(resp.StatusCode):
			loc := resp.Header.Get("Location")
			discard(resp)
			next, err := target.Parse(loc)
			if loc == "" || err != nil {
				// Not the Location itself: a presigned one carries its
				// signature in the query, and errors reach the log.
				return nil, &Error{Op: op, Cause: CauseOther, Status: resp.StatusCode, Err: errors.New("redirect without a usable Location")}
			}
			if next.Scheme != "http" && next.Scheme != "https" || next.Host == "" {
				return nil, &Error{Op: op, Cause: CauseOther, Status: resp.StatusCode, Err: fmt.Errorf("redirect to unsupported scheme %q", next.Scheme)}
			}
			if c.remote.Scheme == "https" && next.Scheme == "http" {
				// Behind a TLS-terminating balancer with a wrong
				// X-Forwarded-Proto this is a misconfiguration, elsewhere
				// an attack; either way, following it would send the
				// request, and what it carries, in clear.
				return nil, c.refuse(op, &HopRefused{Host: next.Host, Reason: RefusedDowngrade})
			}
			hops++
			if hops > maxRedirects {
				return nil, &Error{Op: op, Cause: CauseOther, Status: resp.StatusCode, Err: fmt.Errorf("more than %d redirects", maxRedirects)}
			}
			c.redirected()
			if resp.StatusCode == http.StatusSeeOther && method != http.MethodHead {
				method = http.MethodGet
			}
			target = next
			continue
		}
		if resp.StatusCode == http.StatusUnauthorized {
			c.auth.invalidate(origin, repo)
		}
		return resp, nil
	}
}

// refuse makes the error of a hop the policy refused, and reports it. The
// client is answered as for an unreachable upstream.
func (c *Client) refuse(op string, err error) error {
	var hr *HopRefused
	if errors.As(err, &hr) {
		c.refused(hr.Host, hr.Reason)
	}
	return &Error{Op: op, Cause: CauseUnreachable, Err: err}
}

// refusals reports the hops the dialer refused, whichever call dialed
// them: an API request, a redirect hop or a token request.
type refusals struct {
	next    http.RoundTripper
	refused func(host, reason string)
}

func (r refusals) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	var hr *HopRefused
	if err != nil && errors.As(err, &hr) {
		r.refused(hr.Host, hr.Reason)
	}
	return resp, err
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// discard drains a little of a body we do not read, so the connection can be
// reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// headers runs send with its whole wait for response headers, token
// requests and redirect hops included, bounded by the upstream timeout, but
// not the body that follows: that is the idle timeout's job. A missed
// deadline is a CauseTimeout error, never a bare cancellation a caller could
// mistake for its client leaving.
func (c *Client) headers(ctx context.Context, op, method, repo, path string, accept []string) (*http.Response, context.CancelFunc, error) {
	return c.headersRange(ctx, op, method, repo, path, accept, "")
}

// headersRange is headers with a Range header (see send).
func (c *Client) headersRange(ctx context.Context, op, method, repo, path string, accept []string, rng string) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(ctx)
	var timedOut atomic.Bool
	timer := time.AfterFunc(c.timeout, func() {
		timedOut.Store(true)
		cancel()
	})
	resp, err := c.send(ctx, op, method, repo, path, accept, rng)
	stopped := timer.Stop()
	if !stopped && timedOut.Load() {
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		return nil, nil, &Error{Op: op, Cause: CauseTimeout, Err: fmt.Errorf("no answer within %v", c.timeout)}
	}
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return resp, cancel, nil
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

// MaxTagListSize bounds a tag list body; registries paginate long lists.
const MaxTagListSize = 4 << 20

// TagList is one page of a repository's tags as the upstream sent it.
type TagList struct {
	// Tags are the page's tags, in the upstream's order.
	Tags []string
	// Next is the query (n, last) of the following page, from the
	// upstream's Link header, or "" on the last page.
	Next string
}

// GetTags fetches one page of a repository's tag list; query is the
// client's (n, last), passed on as is.
func (c *Client) GetTags(ctx context.Context, repo, query string) (TagList, error) {
	ctx, cancelAll := context.WithTimeout(ctx, 2*c.timeout)
	defer cancelAll()
	path := "/v2/" + repo + "/tags/list"
	if query != "" {
		path += "?" + query
	}
	resp, cancel, err := c.headers(ctx, "get tags", http.MethodGet, repo, path, []string{"application/json"})
	if err != nil {
		return TagList{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return TagList{}, statusError("get tags", resp)
	}
	body, err := readSmall(resp, "get tags", MaxTagListSize)
	if err != nil {
		return TagList{}, err
	}
	tags, err := parseTagList(body)
	if err != nil {
		return TagList{}, err
	}
	next, err := nextQuery(resp.Header.Get("Link"))
	if err != nil {
		return TagList{}, err
	}
	return TagList{Tags: tags, Next: next}, nil
}

// nextQuery takes the query of a Link header's rel="next" URL. Only the
// query is kept: the path is the upstream's (under a redirected API, another
// prefix), and the client must come back to us. The query is re-encoded
// from its parsed values, so what goes into our own Link header is ours.
func nextQuery(link string) (string, error) {
	for part := range strings.SplitSeq(link, ",") {
		if !strings.Contains(part, `rel="next"`) {
			continue
		}
		start, end := strings.IndexByte(part, '<'), strings.IndexByte(part, '>')
		if start < 0 || end <= start {
			continue
		}
		u, err := url.Parse(part[start+1 : end])
		if err != nil {
			return "", badContent("get tags", "next page link: %w", err)
		}
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return "", badContent("get tags", "next page link: %w", err)
		}
		return q.Encode(), nil
	}
	return "", nil
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
