package main

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// front is a counting reverse proxy in front of the upstream registry. Both
// proxies under test and the "direct" pulls go through it, so what the
// upstream served is measured at the upstream: GETs and body bytes per path.
// In black-hole mode it accepts requests and never answers them.
type front struct {
	rp     *httputil.ReverseProxy
	srv    *http.Server
	url    string
	tokens http.Handler

	blackhole atomic.Bool
	inflight  atomic.Int64
	// rate, when > 0, caps each blob response body at rate bytes/s, as a
	// WAN link to a real registry would.
	rate atomic.Int64

	mu    sync.Mutex
	held  chan struct{} // closed to release black-holed requests
	hold  *bodyHold     // the next blob GET body to stop part-way, if any
	gets  map[string]int64
	heads map[string]int64
	other int64
	bytes map[string]int64
}

// startFront starts a front before target. edit, if non-nil, may change
// each upstream response before it is counted and relayed (the token + CDN
// upstream signs its CDN redirects there). tokens, if non-nil, answers
// /token on the front's own address instead of the target.
func startFront(target string, edit func(*http.Response), tokens http.Handler) (*front, error) {
	tu, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	f := &front{
		held:   make(chan struct{}),
		gets:   map[string]int64{},
		heads:  map[string]int64{},
		bytes:  map[string]int64{},
		tokens: tokens,
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	f.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(tu)
			// Keep the client's Host: the registry builds Location headers
			// from it, and those must point back at the front.
			r.Out.Host = r.In.Host
		},
		Transport:  tr,
		BufferPool: bufPool{},
		ErrorLog:   log.New(io.Discard, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			if edit != nil {
				edit(resp)
			}
			cb := &countingBody{rc: resp.Body, f: f, path: resp.Request.URL.Path, start: time.Now()}
			if strings.Contains(cb.path, "/blobs/") {
				cb.rate = f.rate.Load()
				if resp.Request.Method == http.MethodGet {
					cb.hold = f.takeHold(cb.path)
				}
			}
			resp.Body = cb
			return nil
		},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f.url = "http://" + l.Addr().String()
	f.srv = &http.Server{Handler: f, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = f.srv.Serve(l) }()
	return f, nil
}

func (f *front) close() {
	f.setBlackhole(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		_ = f.srv.Close()
	}
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.blackhole.Load() {
		f.mu.Lock()
		held := f.held
		f.mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-held:
		}
		// Drop the connection without an answer, like a crashed upstream.
		panic(http.ErrAbortHandler)
	}
	if f.tokens != nil && r.URL.Path == "/token" {
		f.tokens.ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	switch r.Method {
	case http.MethodGet:
		f.gets[r.URL.Path]++
	case http.MethodHead:
		f.heads[r.URL.Path]++
	default:
		f.other++
	}
	f.mu.Unlock()
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	f.rp.ServeHTTP(w, r)
}

// setBlackhole switches black-hole mode; switching it off releases (drops)
// every request held so far.
func (f *front) setBlackhole(on bool) {
	if on {
		f.blackhole.Store(true)
		return
	}
	f.blackhole.Store(false)
	f.mu.Lock()
	close(f.held)
	f.held = make(chan struct{})
	f.mu.Unlock()
}

// counts sums GETs and body bytes over paths containing substr.
func (f *front) counts(substr string) (gets, bytes int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p, n := range f.gets {
		if strings.Contains(p, substr) {
			gets += n
		}
	}
	for p, n := range f.bytes {
		if strings.Contains(p, substr) {
			bytes += n
		}
	}
	return gets, bytes
}

// quiesce waits until no proxied request is in flight (bounded).
func (f *front) quiesce(max time.Duration) error {
	deadline := time.Now().Add(max)
	for f.inflight.Load() > 0 {
		if time.Now().After(deadline) {
			return errors.New("upstream requests still in flight")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// bodyHold stops one upstream blob body after at bytes until released, so
// that a test can act (kill the proxy fetching it) at a known point of the
// fill rather than race a fast loopback transfer.
type bodyHold struct {
	substr   string
	at       int64
	reached  chan struct{} // closed once at bytes went to the proxy
	release  chan struct{}
	reachOne sync.Once
	freeOne  sync.Once
}

// free lets the held body go on; safe to call more than once.
func (h *bodyHold) free() { h.freeOne.Do(func() { close(h.release) }) }

// holdBody stops the next blob GET body whose path contains substr after
// at bytes. Only that one: a fill resumed from elsewhere runs freely.
func (f *front) holdBody(substr string, at int64) *bodyHold {
	h := &bodyHold{substr: substr, at: at, reached: make(chan struct{}), release: make(chan struct{})}
	f.mu.Lock()
	f.hold = h
	f.mu.Unlock()
	return h
}

// unhold frees h and, if no body took it, withdraws it, so that it never
// stops a later, unrelated GET.
func (f *front) unhold(h *bodyHold) {
	f.mu.Lock()
	if f.hold == h {
		f.hold = nil
	}
	f.mu.Unlock()
	h.free()
}

// takeHold hands the pending hold to the body of path, if it is the one.
func (f *front) takeHold(path string) *bodyHold {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.hold
	if h == nil || !strings.Contains(path, h.substr) {
		return nil
	}
	f.hold = nil
	return h
}

type countingBody struct {
	rc    io.ReadCloser
	f     *front
	path  string
	n     int64
	once  sync.Once
	rate  int64
	start time.Time
	hold  *bodyHold
}

func (c *countingBody) Read(p []byte) (int, error) {
	if h := c.hold; h != nil {
		// The reverse proxy writes each chunk before it reads the next, so
		// when this read blocks the proxy has been handed the first at bytes.
		if c.n >= h.at {
			h.reachOne.Do(func() { close(h.reached) })
			<-h.release
			c.hold = nil
		} else if rest := h.at - c.n; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	if c.rate > 0 && len(p) > 64<<10 {
		p = p[:64<<10] // small steps keep the pace smooth
	}
	n, err := c.rc.Read(p)
	c.n += int64(n)
	if c.rate > 0 && n > 0 {
		due := c.start.Add(time.Duration(float64(c.n) / float64(c.rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
	}
	return n, err
}

func (c *countingBody) Close() error {
	c.once.Do(func() {
		c.f.mu.Lock()
		c.f.bytes[c.path] += c.n
		c.f.mu.Unlock()
	})
	return c.rc.Close()
}

// bufPool gives the reverse proxy 256 KiB copy buffers instead of 32 KiB.
type bufPool struct{}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (bufPool) Get() []byte  { return *(copyBufs.Get().(*[]byte)) }
func (bufPool) Put(b []byte) { copyBufs.Put(&b) }
