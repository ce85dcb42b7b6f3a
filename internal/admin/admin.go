// Package admin is the admin listener's HTTP surface, routed with gorilla/mux:
// metrics, health, the status API and page, and the API behind `multiproxy
// resolve` and `purge`.
//
//	GET  /metrics                 Prometheus exposition, our own registry
//	GET  /healthz                 the process is alive
//	GET  /readyz                  200 when every upstream listener serves and
//	                              every store can be written, else 503
//	GET  /api/v1/status           every upstream at a glance (JSON)
//	GET  /                        the same as an HTML page that refreshes itself
//	GET  /api/v1/resolve?image=   the digest a tag points at now
//	POST /api/v1/purge?image=     drop a cached tag             (guarded)
//	POST /api/v1/recycle?upstream=  rebuild an upstream's App   (guarded)
//	POST /api/v1/gc?upstream=[&dry_run=true]  collect garbage   (guarded)
//	POST /api/v1/warm             fill the cache ahead of a rollout (guarded;
//	                              JSON in, NDJSON events out: warm.Request)
//	GET, POST, DELETE /api/v1/pins  list, add, remove pins      (see pins.go)
//
// Mutating endpoints need the bearer token from admin.token_file (the
// scheme matched case-insensitively, as RFC 9110 has it). With no token
// configured they are served only when the admin listener is bound to
// loopback, so an admin API is never open to the network by default, and
// only to requests that come from this host's operator rather than from a
// web page open in a browser on the host: a loopback listener is
// reachable from every such page, which can POST to it cross-site without
// a CORS preflight, or, by rebinding its own name to 127.0.0.1, even
// same-origin. So a tokenless action needs a loopback Host (localhost,
// 127.0.0.0/8 or [::1], any port), no Origin other than a loopback one
// ("null" is not), and a Sec-Fetch-Site, if any, of same-origin or none.
// curl and `multiproxy purge` pointed at the listener pass. A token needs
// none of this: a page cannot send an Authorization header cross-site
// without the CORS consent this API never gives.
//
// A refusal is 401 (no bearer token sent) or 403 (wrong token, no token
// configured on a non-loopback listener, or a request that may come from a
// web page), always with a JSON error body, is logged at warn with its
// reason, and is decided before the Backend is called.
//
// Error bodies are {"error": message}, plus the OCI distribution form
// {"errors": [{"code": ..., "message": ...}]} when the Backend gives a code.
// Only a *StatusError's own message reaches a client; any other error is
// logged and answered with a bare 500, so that no filesystem path, storage
// driver message or Go error chain leaves the process.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
)

// Backend is what the admin API acts on. It is implemented by the server
// wiring, so this package knows nothing of proxies or caches.
type Backend interface {
	// Resolve returns the digest image's tag points at now, as a pull would.
	Resolve(ctx context.Context, image string) (Resolution, error)
	// Purge drops a cached tag so the next pull refetches it.
	Purge(ctx context.Context, image string) error
	// Ready reports whether every upstream listener is serving and every
	// store can be written (GET /readyz); the second value is the JSON
	// body, with each upstream's state.
	Ready() (bool, any)
	// Status is every upstream at a glance.
	Status(ctx context.Context) (Status, error)
	// Recycle rebuilds an upstream's embedded App now.
	Recycle(ctx context.Context, upstream string) error
	// GC collects an upstream's garbage now, or with dryRun only reports
	// what it would delete. The result is sent back as JSON.
	GC(ctx context.Context, upstream string, dryRun bool) (any, error)
}

// Resolution is the answer to a resolve.
type Resolution struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
	Pinned string `json:"pinned"`
	Stale  bool   `json:"stale"`
}

// StatusError lets a Backend choose the HTTP status of its error. Its
// message is sent to the client as it is, so it must be written for one:
// say what went wrong in the client's terms and leave paths, storage
// errors and wrapped Go errors to the log.
type StatusError struct {
	Status int
	// Code, if set, is an OCI distribution error code (MANIFEST_UNKNOWN,
	// UNAVAILABLE, ...) sent with the message in the OCI error form.
	Code string
	Err  error
}

// OCI distribution error codes the admin API answers with.
var (
	CodeManifestUnknown = errcode.ErrorCodeManifestUnknown.String()
	CodeNameInvalid     = errcode.ErrorCodeNameInvalid.String()
	CodeDenied          = errcode.ErrorCodeDenied.String()
	CodeUnavailable     = errcode.ErrorCodeUnavailable.String()
	CodeUnsupported     = errcode.ErrorCodeUnsupported.String()
	CodeUnknown         = errcode.ErrorCodeUnknown.String()
)

func (e *StatusError) Error() string { return e.Err.Error() }
func (e *StatusError) Unwrap() error { return e.Err }

// Options configures the handler.
type Options struct {
	Backend Backend
	Metrics http.Handler
	// Token guards mutating endpoints; empty means loopback-only.
	Token string
	// Loopback says the admin listener is bound to a loopback address.
	Loopback bool
	// Logger receives the errors kept from clients; nil: slog.Default().
	Logger *slog.Logger
}

// Handler builds the admin router.
func Handler(o Options) http.Handler {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	writeErr := func(w http.ResponseWriter, req *http.Request, err error) { writeError(w, req, log, err) }
	r := mux.NewRouter()
	r.Handle("/metrics", o.Metrics).Methods(http.MethodGet)
	r.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}).Methods(http.MethodGet)
	r.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, detail := o.Backend.Ready()
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, detail)
	}).Methods(http.MethodGet)
	// Routes on the root router, not a PathPrefix subrouter: gorilla/mux
	// 1.8 answers a subrouter's method mismatch with 404, not 405.
	const api = "/api/v1"
	r.HandleFunc(api+"/resolve", func(w http.ResponseWriter, req *http.Request) {
		res, err := o.Backend.Resolve(req.Context(), req.URL.Query().Get("image"))
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}).Methods(http.MethodGet)
	r.HandleFunc(api+"/status", func(w http.ResponseWriter, req *http.Request) {
		st, err := o.Backend.Status(req.Context())
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	}).Methods(http.MethodGet)
	r.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		st, err := o.Backend.Status(req.Context())
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writePage(w, req, log, st)
	}).Methods(http.MethodGet)
	r.Handle(api+"/purge", guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		image := req.URL.Query().Get("image")
		if err := o.Backend.Purge(req.Context(), image); err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"purged": image})
	}))).Methods(http.MethodPost)
	r.Handle(api+"/recycle", guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		name, ok := upstreamParam(w, req)
		if !ok {
			return
		}
		if err := o.Backend.Recycle(req.Context(), name); err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"recycled": name})
	}))).Methods(http.MethodPost)
	r.Handle(api+"/gc", guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		name, ok := upstreamParam(w, req)
		if !ok {
			return
		}
		dryRun := false
		if v := req.URL.Query().Get("dry_run"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, errBody(fmt.Sprintf("dry_run=%q: want true or false", v)))
				return
			}
			dryRun = b
		}
		res, err := o.Backend.GC(req.Context(), name, dryRun)
		if err != nil {
			writeErr(w, req, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}))).Methods(http.MethodPost)
	r.Handle(api+"/warm", guard(o, log, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		serveWarm(o, log, w, req)
	}))).Methods(http.MethodPost)
	routePins(r, o, log)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, errBody("not found"))
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, errBody("method not allowed"))
	})
	return r
}

// guard admits a mutating request only with the right token, or, with no
// token configured, from a loopback-bound listener and only when it comes
// from this host's operator rather than from a web page (sameHostRefusal).
// Every refusal is logged, so that an attack shows up in the log.
func guard(o Options, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(status int, reason, msg string) {
			log.Warn("admin request refused", "method", r.Method, "path", r.URL.Path,
				"remote", r.RemoteAddr, "reason", reason)
			writeJSON(w, status, errBody(msg))
		}
		if o.Token == "" {
			if !o.Loopback {
				refuse(http.StatusForbidden, "no admin.token_file and the listener is not on loopback",
					"admin actions need admin.token_file when the admin listener is not on loopback")
				return
			}
			if reason := sameHostRefusal(r); reason != "" {
				refuse(http.StatusForbidden, reason,
					"refused: "+reason+"; without admin.token_file admin actions are served only to requests made on this host, not to web pages")
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		// Auth schemes are case-insensitive (RFC 9110 11.1), and a
		// scheme is followed by one or more spaces.
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="multiproxy-admin"`)
			refuse(http.StatusUnauthorized, "no bearer token", "bearer token required")
			return
		}
		got = strings.TrimLeft(got, " ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(o.Token)) != 1 {
			refuse(http.StatusForbidden, "wrong token", "wrong token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sameHostRefusal says why a tokenless request may have been sent by a
// web page rather than by an operator on this host, or "" if nothing says
// so. A loopback listener is reachable from every browser on the host: any
// page can POST to it cross-site without a CORS preflight, and a page
// whose name an attacker rebinds to 127.0.0.1 even sends its own name as
// Host. Browsers always send Host and cannot forge it, Origin or
// Sec-Fetch-Site, while curl and the multiproxy CLI send a loopback Host
// and neither of the others.
func sameHostRefusal(r *http.Request) string {
	if !loopbackHost(r.Host) {
		return fmt.Sprintf("Host %q is not a loopback name", clip(r.Host))
	}
	for _, origin := range r.Header.Values("Origin") {
		if !loopbackOrigin(origin) {
			return fmt.Sprintf("Origin %q is not on loopback", clip(origin))
		}
	}
	for _, site := range r.Header.Values("Sec-Fetch-Site") {
		// same-site is refused too: another port of localhost is the
		// same site, and it may serve anything.
		switch strings.ToLower(strings.TrimSpace(site)) {
		case "same-origin", "none":
		default:
			return fmt.Sprintf("Sec-Fetch-Site is %q", clip(site))
		}
	}
	return ""
}

// clip shortens a header value quoted in a refusal: the sender chooses
// it, and it goes to the log and back in the answer.
func clip(v string) string {
	const limit = 100
	if len(v) <= limit {
		return v
	}
	return v[:limit] + "…"
}

// loopbackHost reports whether a Host header value (host, host:port,
// [v6]:port or [v6]) names localhost or a loopback IP.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackOrigin reports whether an Origin header value is an http(s)
// origin on a loopback host. "null", sent by sandboxed frames, file: pages
// and some redirects, is not: nothing says where such a request came from.
func loopbackOrigin(origin string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false
	}
	return loopbackHost(u.Host)
}

// IsLoopback reports whether a listen address binds only to loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// upstreamParam reads the required ?upstream= of an action on one upstream.
func upstreamParam(w http.ResponseWriter, req *http.Request) (string, bool) {
	name := strings.TrimSpace(req.URL.Query().Get("upstream"))
	if name == "" {
		writeJSON(w, http.StatusBadRequest, errBody("upstream parameter required, e.g. ?upstream=docker.io"))
		return "", false
	}
	return name, true
}

func errBody(msg string) map[string]string { return map[string]string{"error": msg} }

// ociError is one entry of the OCI distribution error form.
type ociError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errorBody is an error answer: the message for people and the admin
// Client, and the OCI form when there is a code.
type errorBody struct {
	Error  string     `json:"error"`
	Errors []ociError `json:"errors,omitempty"`
}

// writeError answers with err. Only a *StatusError's own message is sent
// (not the text of errors wrapping it); anything else is logged and
// answered with a bare 500.
func writeError(w http.ResponseWriter, req *http.Request, log *slog.Logger, err error) {
	var se *StatusError
	if !errors.As(err, &se) || se.Err == nil {
		log.Error("admin request failed", "method", req.Method, "path", req.URL.Path, "err", err)
		writeJSON(w, http.StatusInternalServerError, errorBody{
			Error:  "internal error; the server log has the details",
			Errors: []ociError{{Code: CodeUnknown, Message: "internal error"}},
		})
		return
	}
	status := se.Status
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	body := errorBody{Error: se.Error()}
	if se.Code != "" {
		body.Errors = []ociError{{Code: se.Code, Message: se.Error()}}
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
