package testinfra

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	defaultCDNURLTTL = 60 * time.Second
	// blobStoragePrefix is where distribution's filesystem driver keeps
	// blob data; the redirect middleware puts this path in its URLs.
	blobStoragePrefix = "/docker/registry/v2/blobs/"
)

// CDN is a registry's blob host: the registry (with distribution's
// redirect storage middleware, its Location signed by Sign) answers blob
// GETs and HEADs with 307 to it, as Docker Hub, ghcr.io and
// quay.io send clients to a CDN or object store. It serves the registry's
// storage read-only, and behaves like an S3 presigned URL:
//   - a request carrying Authorization gets 400 InvalidArgument "Only one
//     auth mechanism allowed", as S3 answers clients that forward the
//     registry's token;
//   - only URLs with a valid, unexpired X-Expires/X-Signature pair (which
//     Sign appends to the registry's redirects) are served; others get 403.
//
// GET and HEAD are supported, with Range. Every request is recorded.
// Methods are safe for concurrent use.
type CDN struct {
	svc    *Service
	root   string
	secret []byte
	urlTTL time.Duration
	wrap   func(http.Handler) http.Handler

	mu       sync.Mutex
	requests []*CDNRequest
}

// CDNRequest is one request the CDN received.
type CDNRequest struct {
	Time   time.Time
	Method string
	// Path is the storage path, e.g.
	// "/docker/registry/v2/blobs/sha256/ab/ab12.../data"; Digest is the
	// blob digest it names ("sha256:ab12..."), or "".
	Path   string
	Digest string
	Query  string
	// UserAgent helps tell which client fetched a blob.
	UserAgent     string
	Authorization bool
	Range         string
	// Status is the answer's HTTP status, 0 while still being handled.
	Status int
}

// CDNOptions configures a CDN.
type CDNOptions struct {
	// Root is the registry's filesystem storage root, which the CDN
	// serves read-only.
	Root string
	// URLTTL is how long a signed URL stays valid, 60 s if zero.
	URLTTL time.Duration
	// Wrap, if set, wraps the CDN's handler, inside its request recording.
	Wrap func(http.Handler) http.Handler
	// TLS, if set, makes the CDN serve HTTPS.
	TLS *tls.Config
}

// NewCDN makes a CDN on a free 127.0.0.1 port, not serving until Start.
func NewCDN(opts CDNOptions) (*CDN, error) {
	svc, err := NewService(opts.TLS)
	if err != nil {
		return nil, fmt.Errorf("CDN: %w", err)
	}
	c := &CDN{
		svc:    svc,
		root:   opts.Root,
		secret: []byte(RandomHex(32)),
		urlTTL: opts.URLTTL,
		wrap:   opts.Wrap,
	}
	if c.urlTTL <= 0 {
		c.urlTTL = defaultCDNURLTTL
	}
	return c, nil
}

// Start serves on the CDN's address, again if it was stopped; a no-op
// while serving. Its signing key survives a restart.
func (c *CDN) Start() error { return c.svc.Start(c.handler()) }

// Stop closes the CDN's port and connections and waits for its handlers;
// a no-op while stopped.
func (c *CDN) Stop() error { return c.svc.Stop() }

// URL is the CDN's base URL, e.g. "http://localhost:PORT". It names
// localhost rather than 127.0.0.1; see the package documentation.
func (c *CDN) URL() string { return c.svc.NamedURL() }

// Host is the CDN's "127.0.0.1:port".
func (c *CDN) Host() string { return c.svc.Addr() }

// Count reports how many requests the CDN received whose method matches
// (case-insensitive; "" = any) and whose path or blob digest contains
// pathContains, so a digest from LayerDigests works as it does with
// Faults.Count.
func (c *CDN) Count(method, pathContains string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.requests {
		if (method == "" || strings.EqualFold(method, r.Method)) &&
			(strings.Contains(r.Path, pathContains) || (r.Digest != "" && strings.Contains(r.Digest, pathContains))) {
			n++
		}
	}
	return n
}

// Requests lists every request the CDN received, in arrival order.
func (c *CDN) Requests() []CDNRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CDNRequest, len(c.requests))
	for i, r := range c.requests {
		out[i] = *r
	}
	return out
}

// AuthorizationSeen is the number of requests that carried an
// Authorization header; a client that leaks its registry token scores here.
func (c *CDN) AuthorizationSeen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.requests {
		if r.Authorization {
			n++
		}
	}
	return n
}

// ResetCounts forgets recorded requests.
func (c *CDN) ResetCounts() {
	c.mu.Lock()
	c.requests = nil
	c.mu.Unlock()
}

// SignedURL is the URL the registry would redirect to for storagePath,
// valid until expires. Tests use it to make expired URLs.
func (c *CDN) SignedURL(storagePath string, expires time.Time) string {
	return c.URL() + (&url.URL{Path: storagePath, RawQuery: c.signature(storagePath, expires)}).String()
}

func (c *CDN) signature(storagePath string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return url.Values{"X-Expires": {exp}, "X-Signature": {c.mac(storagePath, exp)}}.Encode()
}

func (c *CDN) mac(storagePath, expires string) string {
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte(storagePath + "\n" + expires))
	return hex.EncodeToString(m.Sum(nil))
}

// Sign adds a signature to location if it points at this CDN, as the
// registry's storage would when presigning, and returns it unchanged
// otherwise.
func (c *CDN) Sign(location string) string {
	if !strings.HasPrefix(location, c.URL()+"/") {
		return location
	}
	u, err := url.Parse(location)
	if err != nil {
		return location
	}
	u.RawQuery = c.signature(u.Path, time.Now().Add(c.urlTTL))
	return u.String()
}

func (c *CDN) handler() http.Handler {
	var h http.Handler = http.HandlerFunc(c.serve)
	if c.wrap != nil {
		h = c.wrap(h)
	}
	// Recording comes first so that requests a fault swallows still count,
	// as they do with Faults.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &CDNRequest{
			Time:          time.Now(),
			Method:        r.Method,
			Path:          r.URL.Path,
			Digest:        storageDigest(r.URL.Path),
			Query:         r.URL.RawQuery,
			UserAgent:     r.UserAgent(),
			Authorization: r.Header.Get("Authorization") != "",
			Range:         r.Header.Get("Range"),
		}
		c.mu.Lock()
		c.requests = append(c.requests, rec)
		c.mu.Unlock()
		sw := &StatusWriter{ResponseWriter: w}
		defer func() {
			c.mu.Lock()
			rec.Status = sw.Status
			c.mu.Unlock()
		}()
		h.ServeHTTP(sw, r)
	})
}

func (c *CDN) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s3Error(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
		return
	}
	if r.Header.Get("Authorization") != "" {
		s3Error(w, r, http.StatusBadRequest, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
		return
	}
	q := r.URL.Query()
	exp, sig := q.Get("X-Expires"), q.Get("X-Signature")
	if exp == "" || sig == "" {
		s3Error(w, r, http.StatusForbidden, "AccessDenied", "Query-string authentication requires the X-Signature and X-Expires parameters")
		return
	}
	if !hmac.Equal([]byte(sig), []byte(c.mac(r.URL.Path, exp))) {
		s3Error(w, r, http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
		return
	}
	if n, err := strconv.ParseInt(exp, 10, 64); err != nil || time.Now().Unix() > n {
		s3Error(w, r, http.StatusForbidden, "AccessDenied", "Request has expired")
		return
	}

	clean := path.Clean(r.URL.Path)
	if !strings.HasPrefix(clean, blobStoragePrefix) {
		s3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	f, err := os.Open(filepath.Join(c.root, filepath.FromSlash(clean)))
	if errors.Is(err, fs.ErrNotExist) {
		s3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	if err != nil {
		s3Error(w, r, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.IsDir() {
		s3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if d := storageDigest(clean); d != "" {
		w.Header().Set("ETag", `"`+d+`"`)
	}
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// storageDigest is the digest a blob storage path names, or "".
func storageDigest(p string) string {
	// <prefix><alg>/<2 hex>/<hex>/data
	parts := strings.Split(strings.TrimPrefix(p, blobStoragePrefix), "/")
	if !strings.HasPrefix(p, blobStoragePrefix) || len(parts) != 4 || parts[3] != "data" {
		return ""
	}
	return parts[0] + ":" + parts[2]
}

// s3Error answers like S3 does, XML and all.
func s3Error(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error><Code>")
	_ = xml.EscapeText(&b, []byte(code))
	b.WriteString("</Code><Message>")
	_ = xml.EscapeText(&b, []byte(message))
	b.WriteString("</Message><RequestId>")
	b.WriteString(RandomHex(8))
	b.WriteString("</RequestId></Error>\n")
	_, _ = w.Write([]byte(b.String()))
}

// StatusWriter remembers the status sent, for a server that records what
// it answered.
type StatusWriter struct {
	http.ResponseWriter
	// Status is the status sent, 0 before the first WriteHeader or Write.
	Status int
}

func (s *StatusWriter) WriteHeader(code int) {
	if s.Status == 0 {
		s.Status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *StatusWriter) Write(p []byte) (int, error) {
	if s.Status == 0 {
		s.Status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (sendfile,
// flushes).
func (s *StatusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
