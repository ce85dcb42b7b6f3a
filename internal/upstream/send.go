package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// maxRedirects bounds how many redirects one upstream call follows, as
// net/http's client does.
const maxRedirects = 10

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
