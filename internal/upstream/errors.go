package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Cause says why an upstream exchange failed, in the terms the cache decides
// on (stale-if-error, pass-through status) and metrics are labelled with.
type Cause string

// Causes of upstream failure.
const (
	CauseUnreachable Cause = "unreachable"  // refused, reset, DNS, TLS
	CauseTimeout     Cause = "timeout"      // no answer within the upstream timeout
	CauseRateLimited Cause = "rate_limited" // 429
	CauseAuth        Cause = "auth"         // 401/403, or the token service failed
	CauseNotFound    Cause = "not_found"    // 404: authoritative absence
	CauseServerError Cause = "server_error" // 5xx
	CauseBadContent  Cause = "bad_content"  // digest mismatch, short or oversized body
	CauseOther       Cause = "other"        // any other status
)

// Error is a failed upstream exchange.
type Error struct {
	Op     string
	Cause  Cause
	Status int         // upstream HTTP status, 0 if none was received
	Header http.Header // selected upstream headers (Retry-After) worth passing on
	Err    error
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("upstream %s: %d %s: %v", e.Op, e.Status, http.StatusText(e.Status), e.Err)
	}
	return fmt.Sprintf("upstream %s: %s: %v", e.Op, e.Cause, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// CauseOf returns the Cause of err, or CauseOther for errors not from here.
func CauseOf(err error) Cause {
	var ue *Error
	if errors.As(err, &ue) {
		return ue.Cause
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CauseTimeout
	}
	return CauseOther
}

// IsNotFound reports an authoritative 404 from a working upstream.
func IsNotFound(err error) bool { return CauseOf(err) == CauseNotFound }

func causeForStatus(code int) Cause {
	switch {
	case code == http.StatusTooManyRequests:
		return CauseRateLimited
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return CauseAuth
	case code == http.StatusNotFound:
		return CauseNotFound
	case code >= 500:
		return CauseServerError
	}
	return CauseOther
}

func statusError(op string, resp *http.Response) error {
	snippet, err := io.ReadAll(io.LimitReader(resp.Body, 512))
	if err != nil {
		// The status line came, the answer did not: cut off by the
		// deadline of a drip-fed body, or reset. A 404 that never arrives
		// whole proves nothing (the referrers API would be taken for
		// absent and an empty list served), so the exchange failed as a
		// body that stalls fails.
		return classify(op, fmt.Errorf("%d answer cut short: %w", resp.StatusCode, err))
	}
	h := http.Header{}
	for _, k := range []string{"Retry-After", "Ratelimit-Limit", "Ratelimit-Remaining"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	return &Error{
		Op:     op,
		Cause:  causeForStatus(resp.StatusCode),
		Status: resp.StatusCode,
		Header: h,
		Err:    errors.New(strings.TrimSpace(string(snippet))),
	}
}

// classify turns a transport-level error into an *Error. An *Error already
// made (a token service's refusal, with its status and CauseAuth) is kept
// as it is.
func classify(op string, err error) error {
	var ue *Error
	if errors.As(err, &ue) {
		return err
	}
	err = withoutQuery(err)
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return &Error{Op: op, Cause: CauseTimeout, Err: err}
	}
	return &Error{Op: op, Cause: CauseUnreachable, Err: err}
}

// withoutQuery drops the query from the URL a *url.Error names: a
// presigned URL carries its signature there, and errors reach the log.
func withoutQuery(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil {
		return fmt.Errorf("%s (URL withheld): %w", ue.Op, ue.Err)
	}
	return fmt.Errorf("%s %s://%s%s: %w", ue.Op, u.Scheme, u.Host, u.Path, ue.Err)
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
