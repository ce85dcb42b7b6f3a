package testsupport

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Faults injects failures in front of a real upstream. Rules are scripted
// per test and may be changed while requests are in flight; all methods
// are safe for concurrent use.
//
// A Faults is typically installed with RegistryOptions{Wrap: f.Wrap}.
type Faults struct {
	mu       sync.Mutex
	rules    []*ruleState
	requests []string
	// held is cancelled to release every request parked by an action;
	// it is replaced so that later requests are unaffected.
	held    context.Context
	release context.CancelFunc
}

// Rule selects requests and what to do with them.
//
// A request matches when Method is "" or equals its method
// (case-insensitive) and its URL path (without query) contains
// PathContains as a plain substring; "" matches every path. Substrings keep
// rules readable: "/blobs/" for all blobs, "/manifests/v1" for one tag, a
// digest for one blob. Times limits how many requests the rule applies to;
// 0 means unlimited. An exhausted rule stays in place but no longer
// matches.
type Rule struct {
	Method       string
	PathContains string
	Times        int
	Action       Action
}

// Action handles a request that matched a rule. next is the wrapped
// upstream; an action may call it, possibly through a modified
// ResponseWriter. The request's context is cancelled when the client goes
// away, when the serving Registry stops, and on Faults.Reset or
// Faults.ReleaseHeld, so actions that wait must watch it.
type Action func(w http.ResponseWriter, r *http.Request, next http.Handler)

type ruleState struct {
	rule Rule
	used int
}

// NewFaults returns a Faults with no rules, which passes everything
// through.
func NewFaults() *Faults {
	f := &Faults{}
	f.held, f.release = context.WithCancel(context.Background())
	return f
}

// Wrap returns next with the fault rules applied. The same Faults can wrap
// several handlers, e.g. successive generations of a restarted Registry.
func (f *Faults) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		action, held := f.match(r)
		if action == nil {
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		stop := context.AfterFunc(held, cancel)
		defer stop()
		action(w, r.WithContext(ctx), next)
	})
}

// match records the request and claims a use of the first matching active
// rule, atomically so that Times is exact under concurrency.
func (f *Faults) match(r *http.Request) (Action, context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	for _, rs := range f.rules {
		if rs.rule.Times > 0 && rs.used >= rs.rule.Times {
			continue
		}
		if rs.rule.Method != "" && !strings.EqualFold(rs.rule.Method, r.Method) {
			continue
		}
		if !strings.Contains(r.URL.Path, rs.rule.PathContains) {
			continue
		}
		rs.used++
		return rs.rule.Action, f.held
	}
	return nil, nil
}

// Add appends a rule; earlier rules take precedence. The returned function
// removes it again and may be called more than once.
func (f *Faults) Add(rule Rule) (remove func()) {
	if rule.Action == nil {
		panic("testsupport: Rule without Action")
	}
	rs := &ruleState{rule: rule}
	f.mu.Lock()
	f.rules = append(f.rules, rs)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, x := range f.rules {
			if x == rs {
				f.rules = append(f.rules[:i:i], f.rules[i+1:]...)
				return
			}
		}
	}
}

// Reset drops all rules and releases requests still parked by BlackHole or
// Delay, so the upstream is healthy again. Counters are kept; see
// ResetCounts.
func (f *Faults) Reset() {
	f.mu.Lock()
	f.rules = nil
	f.mu.Unlock()
	f.ReleaseHeld()
}

// ReleaseHeld aborts the connections of requests currently parked by
// BlackHole or Delay (clients see the connection drop) without touching
// the rules; later requests are unaffected. Note that net/http clients
// transparently retry an idempotent request whose reused keep-alive
// connection drops before any response, so a released GET may come back
// as a new request and meet the same rule.
func (f *Faults) ReleaseHeld() {
	f.mu.Lock()
	release := f.release
	f.held, f.release = context.WithCancel(context.Background())
	f.mu.Unlock()
	release()
}

// Count reports how many requests reached the wrapper, before any fault,
// whose method matches (case-insensitive; "" = any) and whose path contains
// pathContains.
func (f *Faults) Count(method, pathContains string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.requests {
		m, p, _ := strings.Cut(s, " ")
		if (method == "" || strings.EqualFold(method, m)) && strings.Contains(p, pathContains) {
			n++
		}
	}
	return n
}

// Requests lists every request that reached the wrapper as "METHOD /path",
// in arrival order. Clients such as go-containerregistry ping /v2/ once per
// operation, so exact lists are best filtered before comparing.
func (f *Faults) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// ResetCounts forgets recorded requests.
func (f *Faults) ResetCounts() {
	f.mu.Lock()
	f.requests = nil
	f.mu.Unlock()
}

// abort makes net/http drop the connection (HTTP/1) or reset the stream
// (HTTP/2) without logging, which is how a crashed or cut-off upstream
// looks to the client.
func abort() { panic(http.ErrAbortHandler) }

// Delay waits d, then passes the request through. If the request is
// cancelled meanwhile, the connection is dropped instead of answering: an
// empty 200 would be a lie the client might believe.
func Delay(d time.Duration) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			next.ServeHTTP(w, r)
		case <-r.Context().Done():
			abort()
		}
	}
}

// BlackHole accepts the request and never answers. The handler returns
// (dropping the connection) only once the client gives up, the Registry
// stops, or the Faults is Reset/ReleaseHeld, so nothing leaks.
func BlackHole() Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		// Consume the body first: net/http only notices a client
		// disconnect (and cancels the context) once the body is read.
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			abort()
		}
		<-r.Context().Done()
		abort()
	}
}

// Status answers with code, the given headers (e.g. Retry-After) and an
// OCI distribution-spec error body, without contacting the upstream.
func Status(code int, headers map[string]string) Action {
	body, err := json.Marshal(map[string]any{"errors": []map[string]any{{
		"code":    ociErrorCode(code),
		"message": "testsupport: injected " + strconv.Itoa(code) + " " + http.StatusText(code),
	}}})
	if err != nil {
		panic(err)
	}
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		h := w.Header()
		h.Set("Content-Type", "application/json; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		h.Set("Docker-Distribution-API-Version", "registry/2.0")
		for k, v := range headers {
			h.Set(k, v)
		}
		w.WriteHeader(code)
		_, _ = w.Write(body)
	}
}

// Body answers with code, contentType and body, without contacting the
// upstream: an upstream that answers an endpoint with what it is not, such
// as a 200 whose body is no tag list.
func Body(code int, contentType, body string) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		h.Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(code)
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, body)
		}
	}
}

func ociErrorCode(code int) string {
	switch code {
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "DENIED"
	case http.StatusNotFound:
		return "NAME_UNKNOWN"
	case http.StatusMethodNotAllowed:
		return "UNSUPPORTED"
	case http.StatusTooManyRequests:
		return "TOOMANYREQUESTS"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	}
	return "UNKNOWN"
}

// Truncate passes the response through but stops after n body bytes, with
// the upstream's headers (including Content-Length) intact, then drops the
// connection: the client sees a short read (io.ErrUnexpectedEOF over
// HTTP/1). Bodies of n bytes or fewer pass unharmed. n counts bytes of the
// response body as sent, so for a Range request it is relative to the
// range start.
func Truncate(n int64) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		cw := &cutWriter{ResponseWriter: w, remaining: n}
		next.ServeHTTP(cw, r)
		if !cw.cut {
			return
		}
		// Without a flush the bytes before the cut would sit in net/http's
		// buffer and be discarded by the abort.
		_ = http.NewResponseController(w).Flush()
		abort()
	}
}

// CloseMidStream passes the response through until after body bytes have
// been sent, then closes the TCP connection with a reset (SO_LINGER 0), as a
// crashing upstream or a middlebox would: the client sees "connection reset
// by peer", and may lose some of the bytes already sent. Over HTTP/2 the
// stream is reset instead. Bodies of after bytes or fewer pass unharmed.
func CloseMidStream(after int64) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		cw := &cutWriter{ResponseWriter: w, remaining: after}
		next.ServeHTTP(cw, r)
		if !cw.cut {
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		conn, _, err := rc.Hijack()
		if err != nil {
			abort()
		}
		// Under TLS, close the socket beneath it: a close_notify alert
		// would be a polite goodbye, not a crash.
		if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
			conn = tc.NetConn()
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = conn.Close()
	}
}

// FlipByte passes the response through complete and with its original
// length, but with the body byte at offset XORed with 0xff, so only digest
// verification can catch it. Bodies shorter than offset+1 pass unharmed.
func FlipByte(offset int64) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		next.ServeHTTP(&flipWriter{ResponseWriter: w, offset: offset}, r)
	}
}

// errCut is what the upstream's writes fail with once a cut fault has
// fired, which makes it stop as it would after a client disconnect.
var errCut = errors.New("testsupport: response cut by fault injection")

type cutWriter struct {
	http.ResponseWriter
	remaining int64
	cut       bool
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	if int64(len(p)) <= c.remaining {
		n, err := c.ResponseWriter.Write(p)
		c.remaining -= int64(n)
		return n, err
	}
	n, err := c.ResponseWriter.Write(p[:c.remaining])
	c.remaining -= int64(n)
	c.cut = true
	if err != nil {
		return n, err
	}
	return n, errCut
}

func (c *cutWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

type flipWriter struct {
	http.ResponseWriter
	offset int64
	pos    int64
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if i := f.offset - f.pos; i >= 0 && i < int64(len(p)) {
		// Copy: the caller's buffer may be its storage or cache.
		q := append([]byte(nil), p...)
		q[i] ^= 0xff
		p = q
	}
	n, err := f.ResponseWriter.Write(p)
	f.pos += int64(n)
	return n, err
}

func (f *flipWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// HoldBody passes the response through until after body bytes have been
// sent, flushes them, and holds the rest back until release is closed: the
// client has a first part of the body and then an upstream that is still
// sending, for as long as the test wants, with no clock involved. If the
// request is cancelled while held (the client left, Faults.ReleaseHeld,
// the Registry stopped), the connection is dropped. Bodies of after bytes
// or fewer pass unharmed.
func HoldBody(after int64, release <-chan struct{}) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		next.ServeHTTP(&holdWriter{ResponseWriter: w, remaining: after, release: release, done: r.Context().Done()}, r)
	}
}

type holdWriter struct {
	http.ResponseWriter
	remaining int64 // bytes to send before holding; <0 once released
	release   <-chan struct{}
	done      <-chan struct{}
}

func (h *holdWriter) Write(p []byte) (int, error) {
	if h.remaining < 0 || int64(len(p)) <= h.remaining {
		n, err := h.ResponseWriter.Write(p)
		if h.remaining >= 0 {
			h.remaining -= int64(n)
		}
		return n, err
	}
	n, err := h.ResponseWriter.Write(p[:h.remaining])
	if err != nil {
		return n, err
	}
	h.remaining = -1
	_ = http.NewResponseController(h.ResponseWriter).Flush()
	select {
	case <-h.release:
	case <-h.done:
		abort()
	}
	m, err := h.ResponseWriter.Write(p[n:])
	return n + m, err
}

func (h *holdWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// DropHeader passes the response through without the named header, as an
// upstream that does not send it would answer: say, a registry whose HEAD
// of a manifest has no Docker-Content-Digest.
func DropHeader(name string) Action {
	return editHeaders(func(h http.Header) { h.Del(name) })
}

// ContentType passes the response through with its Content-Type replaced
// by ct, as a registry (or a CDN or object store in front of it) that
// serves manifests as text/plain would answer. With ct "" the response
// has no Content-Type at all: net/http does not sniff one in.
func ContentType(ct string) Action {
	return editHeaders(func(h http.Header) {
		if ct == "" {
			// A nil value, not a deleted key: net/http would otherwise
			// detect a type from the body and send it.
			h["Content-Type"] = nil
			return
		}
		h.Set("Content-Type", ct)
	})
}

// editHeaders passes the response through with edit applied to its
// headers just before they are sent.
func editHeaders(edit func(http.Header)) Action {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		next.ServeHTTP(&headerEditor{ResponseWriter: w, edit: edit}, r)
	}
}

type headerEditor struct {
	http.ResponseWriter
	edit  func(http.Header)
	wrote bool
}

func (e *headerEditor) WriteHeader(code int) {
	if !e.wrote {
		e.wrote = true
		e.edit(e.Header())
	}
	e.ResponseWriter.WriteHeader(code)
}

func (e *headerEditor) Write(p []byte) (int, error) {
	if !e.wrote {
		e.WriteHeader(http.StatusOK)
	}
	return e.ResponseWriter.Write(p)
}

func (e *headerEditor) Unwrap() http.ResponseWriter { return e.ResponseWriter }
