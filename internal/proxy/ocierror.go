package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// The OCI distribution error codes we send are distribution's own
// (registry/api/errcode), UNAVAILABLE and TOOMANYREQUESTS included: clients
// already understand them.
var (
	codeUnsupported     = errcode.ErrorCodeUnsupported
	codeNameInvalid     = errcode.ErrorCodeNameInvalid
	codeNameUnknown     = errcode.ErrorCodeNameUnknown
	codeDigestInvalid   = errcode.ErrorCodeDigestInvalid
	codeTagInvalid      = errcode.ErrorCodeTagInvalid
	codeManifestUnknown = errcode.ErrorCodeManifestUnknown
	codeBlobUnknown     = errcode.ErrorCodeBlobUnknown
	codeDenied          = errcode.ErrorCodeDenied
	codeTooManyRequests = errcode.ErrorCodeTooManyRequests
	codeUnavailable     = errcode.ErrorCodeUnavailable
	codeUnknown         = errcode.ErrorCodeUnknown
)

// writeError sends the OCI error JSON body with status.
func writeError(w http.ResponseWriter, status int, code errcode.ErrorCode, msg string) {
	body := []byte(fmt.Sprintf(`{"errors":[{"code":%q,"message":%q}]}`, code.String(), msg))
	h := w.Header()
	// Exactly what distribution's errcode.ServeJSON says, so an error
	// from the cache reads like one from the registry behind it.
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// Failure is what a client is told about a failed request: an HTTP status,
// an OCI error code and a message that never carries a path or an error
// chain (those go to the log).
type Failure struct {
	Status  int
	Code    errcode.ErrorCode
	Message string
	// Header holds upstream headers worth passing on (Retry-After).
	Header http.Header
}

// FailureOf maps a cache or upstream failure to the client's answer. It is
// the one table: the pull path and the admin API's resolve both use it.
// What was not found is a manifest unless notFound says otherwise.
func FailureOf(err error, notFound errcode.ErrorCode) Failure {
	var re *cache.RequestError
	if errors.As(err, &re) {
		// The cache makes a RequestError only of a name distribution's
		// reference parser refuses; a bad digest or tag never reaches it,
		// the route answers those itself (DIGEST_INVALID, TAG_INVALID).
		return Failure{Status: http.StatusBadRequest, Code: codeNameInvalid, Message: re.Error()}
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return Failure{Status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: "upstream did not answer in time"}
		}
		return Failure{Status: http.StatusInternalServerError, Code: codeUnknown, Message: "internal error (the server log has the details)"}
	}
	f := Failure{Header: ue.Header}
	switch ue.Cause {
	case upstream.CauseNotFound:
		f.Status, f.Code, f.Message = http.StatusNotFound, notFound, "not found upstream"
	case upstream.CauseRateLimited:
		f.Status, f.Code, f.Message = http.StatusTooManyRequests, codeTooManyRequests, "upstream rate limit"
	case upstream.CauseAuth:
		// The upstream refused multiproxy's credentials (or wants some):
		// access is denied whoever the client is.
		f.Status, f.Code, f.Message = http.StatusForbidden, codeDenied, "upstream refused multiproxy's credentials"
	case upstream.CauseServerError:
		f.Status, f.Code, f.Message = ue.Status, codeUnavailable, fmt.Sprintf("upstream error %d", ue.Status)
	case cache.CauseStorage:
		f.Status, f.Code, f.Message = http.StatusServiceUnavailable, codeUnavailable, "the cache could not store the blob; retry"
	case upstream.CauseBadContent:
		// A digest mismatch, or an answer that is not what its endpoint
		// serves (a tag list that is none): never relayed.
		f.Status, f.Code, f.Message = http.StatusBadGateway, codeUnknown, "upstream sent content that is not valid for this request"
	case upstream.CauseTimeout:
		f.Status, f.Code, f.Message = http.StatusServiceUnavailable, codeUnavailable, "upstream did not answer in time"
	case upstream.CauseUnreachable:
		f.Status, f.Code, f.Message = http.StatusServiceUnavailable, codeUnavailable, "upstream unreachable"
	default:
		f.Status, f.Code, f.Message = http.StatusBadGateway, codeUnknown, fmt.Sprintf("upstream answered %d", ue.Status)
		if ue.Status >= 400 && ue.Status <= 599 {
			f.Status = ue.Status
		}
	}
	return f
}
