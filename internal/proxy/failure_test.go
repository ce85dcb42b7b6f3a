package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/proxy"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Every cause a failed pull can have gets its status and OCI code, the ones
// clients act on: 404 ends a pull, 429 and 503 are retried, 403 is shown to
// the user. The message never carries the error chain (paths, hosts,
// storage errors): those go to the log.
func TestFailureOfEachCause(t *testing.T) {
	const secret = "/var/lib/multiproxy/secret/path"
	ue := func(c upstream.Cause, status int) error {
		// Wrapped as the cache wraps them: the table must see through it.
		return fmt.Errorf("fill: %w", &upstream.Error{Op: "get blob", Cause: c, Status: status,
			Header: http.Header{"Retry-After": {"30"}}, Err: errors.New(secret)})
	}
	for _, c := range []struct {
		name     string
		err      error
		notFound errcode.ErrorCode
		status   int
		code     errcode.ErrorCode
		message  string
	}{
		{"bad name", &cache.RequestError{Code: "NAME_INVALID", Err: errors.New("invalid reference format")}, errcode.ErrorCodeManifestUnknown,
			400, errcode.ErrorCodeNameInvalid, "invalid reference format"},
		{"manifest not found", ue(upstream.CauseNotFound, 404), errcode.ErrorCodeManifestUnknown,
			404, errcode.ErrorCodeManifestUnknown, "not found upstream"},
		{"blob not found", ue(upstream.CauseNotFound, 404), errcode.ErrorCodeBlobUnknown,
			404, errcode.ErrorCodeBlobUnknown, "not found upstream"},
		{"rate limited", ue(upstream.CauseRateLimited, 429), errcode.ErrorCodeManifestUnknown,
			429, errcode.ErrorCodeTooManyRequests, "upstream rate limit"},
		{"credentials refused", ue(upstream.CauseAuth, 401), errcode.ErrorCodeManifestUnknown,
			403, errcode.ErrorCodeDenied, "upstream refused multiproxy's credentials"},
		{"server error", ue(upstream.CauseServerError, 502), errcode.ErrorCodeManifestUnknown,
			502, errcode.ErrorCodeUnavailable, "upstream error 502"},
		{"store failed", ue(cache.CauseStorage, 0), errcode.ErrorCodeBlobUnknown,
			503, errcode.ErrorCodeUnavailable, "the cache could not store the blob; retry"},
		{"bad content", ue(upstream.CauseBadContent, 0), errcode.ErrorCodeBlobUnknown,
			502, errcode.ErrorCodeUnknown, "upstream sent content that is not valid for this request"},
		{"timeout", ue(upstream.CauseTimeout, 0), errcode.ErrorCodeManifestUnknown,
			503, errcode.ErrorCodeUnavailable, "upstream did not answer in time"},
		{"unreachable", ue(upstream.CauseUnreachable, 0), errcode.ErrorCodeManifestUnknown,
			503, errcode.ErrorCodeUnavailable, "upstream unreachable"},
		{"other status", ue(upstream.CauseOther, 418), errcode.ErrorCodeManifestUnknown,
			418, errcode.ErrorCodeUnknown, "upstream answered 418"},
		{"other, not an error status", ue(upstream.CauseOther, 302), errcode.ErrorCodeManifestUnknown,
			502, errcode.ErrorCodeUnknown, "upstream answered 302"},
		{"deadline outside the client", fmt.Errorf("wait: %w", context.DeadlineExceeded), errcode.ErrorCodeManifestUnknown,
			503, errcode.ErrorCodeUnavailable, "upstream did not answer in time"},
		{"anything else", fmt.Errorf("open %s: %w", secret, errors.New("permission denied")), errcode.ErrorCodeManifestUnknown,
			500, errcode.ErrorCodeUnknown, "internal error (the server log has the details)"},
	} {
		f := proxy.FailureOf(c.err, c.notFound)
		if f.Status != c.status || f.Code != c.code || f.Message != c.message {
			t.Errorf("%s: %d %s %q; want %d %s %q", c.name, f.Status, f.Code, f.Message, c.status, c.code, c.message)
		}
		if strings.Contains(f.Message, secret) {
			t.Errorf("%s: the message %q holds the error chain", c.name, f.Message)
		}
	}
	// Retry-After reaches a rate-limited client, so it waits as long as
	// the upstream asked.
	if f := proxy.FailureOf(ue(upstream.CauseRateLimited, 429), errcode.ErrorCodeManifestUnknown); f.Header.Get("Retry-After") != "30" {
		t.Errorf("rate limited: headers %v, want Retry-After: 30", f.Header)
	}
}
