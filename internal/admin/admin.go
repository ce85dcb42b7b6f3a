// Package admin is the admin listener's HTTP surface, routed with gorilla/mux:
// metrics, health, and the API behind `multiproxy resolve` and `purge`.
//
// Mutating endpoints need the bearer token from admin.token_file. With no
// token configured they are served only when the admin listener is bound to
// loopback, so an admin API is never open to the network by default.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"

	"github.com/gorilla/mux"
)

// Backend is what the admin API acts on. It is implemented by the server
// wiring, so this package knows nothing of proxies or caches.
type Backend interface {
	// Resolve returns the digest image's tag points at now, as a pull would.
	Resolve(ctx context.Context, image string) (Resolution, error)
	// Purge drops a cached tag so the next pull refetches it.
	Purge(ctx context.Context, image string) error
	// Ready reports each upstream's listener state.
	Ready() (bool, any)
}

// Resolution is the answer to a resolve.
type Resolution struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
	Pinned string `json:"pinned"`
	Stale  bool   `json:"stale"`
}

// StatusError lets a Backend choose the HTTP status of its error.
type StatusError struct {
	Status int
	Err    error
}

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
}

// Handler builds the admin router.
func Handler(o Options) http.Handler {
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
	api := r.PathPrefix("/api/v1").Subrouter()
	api.HandleFunc("/resolve", func(w http.ResponseWriter, req *http.Request) {
		res, err := o.Backend.Resolve(req.Context(), req.URL.Query().Get("image"))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}).Methods(http.MethodGet)
	api.Handle("/purge", guard(o, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		image := req.URL.Query().Get("image")
		if err := o.Backend.Purge(req.Context(), image); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"purged": image})
	}))).Methods(http.MethodPost)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, errBody("not found"))
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusMethodNotAllowed, errBody("method not allowed"))
	})
	return r
}

// guard admits a mutating request only with the right token, or from a
// loopback-bound listener when no token is configured.
func guard(o Options, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.Token == "" {
			if !o.Loopback {
				writeJSON(w, http.StatusForbidden, errBody("admin actions need admin.token_file when the admin listener is not on loopback"))
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="multiproxy-admin"`)
			writeJSON(w, http.StatusUnauthorized, errBody("bearer token required"))
			return
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(o.Token)) != 1 {
			writeJSON(w, http.StatusForbidden, errBody("wrong token"))
			return
		}
		next.ServeHTTP(w, r)
	})
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

func errBody(msg string) map[string]string { return map[string]string{"error": msg} }

func writeErr(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var se *StatusError
	if errors.As(err, &se) {
		status = se.Status
	}
	writeJSON(w, status, errBody(err.Error()))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
