package upstream

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// router replaces http.DefaultTransport for the whole process.
//
// distribution's proxy (registry/proxy) makes its upstream calls with
// http.DefaultTransport and http.Get and offers no option for a CA or a
// timeout. The embedded Apps therefore reach their upstream through this
// router, which hands each request to the transport of the upstream whose
// host it targets, and gives every other host (token realms, redirects) a
// transport with bounded waits instead of Go's 30 s dial and unbounded reads.
type router struct {
	mu       sync.RWMutex
	routes   map[string][]*route
	fallback *http.Transport
}

var (
	installOnce sync.Once
	defaultRt   *router
)

// installRouter makes the router http.DefaultTransport, once per process.
func installRouter() *router {
	installOnce.Do(func() {
		fb := http.DefaultTransport.(*http.Transport).Clone()
		fb.DialContext = countDials((&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext)
		fb.TLSHandshakeTimeout = 10 * time.Second
		fb.ResponseHeaderTimeout = 30 * time.Second
		defaultRt = &router{routes: map[string][]*route{}, fallback: fb}
		http.DefaultTransport = defaultRt
	})
	return defaultRt
}

// RouteDefaultTransport sends http.DefaultTransport requests for c's remote
// host through c's transport until the returned function is called.
func RouteDefaultTransport(c *Client) (unroute func()) {
	r := installRouter()
	host := c.remote.Host
	rt := &route{rt: c.RoundTripper()}
	r.mu.Lock()
	r.routes[host] = append(r.routes[host], rt)
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			list := r.routes[host]
			for i, x := range list {
				if x == rt {
					list = append(list[:i:i], list[i+1:]...)
					break
				}
			}
			if len(list) == 0 {
				delete(r.routes, host)
			} else {
				r.routes[host] = list
			}
		})
	}
}

// route is one registration; its address identifies it for removal.
type route struct{ rt http.RoundTripper }

func (r *router) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.RLock()
	list := r.routes[req.URL.Host]
	var rt http.RoundTripper
	if len(list) > 0 {
		// The newest registration wins: after a recycle the new App's client
		// carries the current settings.
		rt = list[len(list)-1].rt
	}
	r.mu.RUnlock()
	if rt == nil {
		return r.fallback.RoundTrip(req)
	}
	return rt.RoundTrip(req)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the fallback.
func (r *router) CloseIdleConnections() { r.fallback.CloseIdleConnections() }
