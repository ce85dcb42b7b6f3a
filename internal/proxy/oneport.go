package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// OnePort serves every upstream behind one listener (listen_all). A request
// goes to the upstream its ?ns= names (containerd >= 1.4 adds it to every
// mirror request), or else to the one its first path segment names
// (/v2/ghcr.io/org/app/manifests/1) for clients that send no ns.
//
// ns is only ever a key into the configured upstreams: a name that matches
// none gets 404 NAME_UNKNOWN and nothing is dialed. A mirror that dialed
// whatever ns said would be an open proxy.
//
// routes is called per request, so a config reload takes effect at once.
// Each Route's Handler is its Server wrapped as the caller serves it on its
// own port (for in-flight metrics); nil means the Server itself.
func OnePort(routes func() []Route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ns := r.URL.Query().Get("ns"); ns != "" {
			if h := handlerFor(routes(), ns); h != nil {
				h.ServeHTTP(&prefixLinks{ResponseWriter: w, ns: ns}, r)
				return
			}
			writeError(w, http.StatusNotFound, codeNameUnknown, fmt.Sprintf("no upstream configured for %q", ns))
			return
		}
		if r.URL.Path == "/v2/" || r.URL.Path == "/v2" {
			// The API version check clients make before anything else.
			w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte("{}"))
			return
		}
		rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
		if ok {
			registry, tail, _ := strings.Cut(rest, "/")
			if h := handlerFor(routes(), registry); h != nil {
				r2 := r.Clone(r.Context())
				r2.URL.Path = "/v2/" + tail
				r2.URL.RawPath = ""
				h.ServeHTTP(&prefixLinks{ResponseWriter: w, prefix: "/v2/" + registry + "/"}, r2)
				return
			}
		}
		writeError(w, http.StatusNotFound, codeNameUnknown,
			"one-port mode: name the registry with ?ns= or a /v2/<registry>/ path prefix")
	})
}

// Route is one upstream behind the one-port listener.
type Route struct {
	Server  *Server
	Handler http.Handler
}

func handlerFor(routes []Route, registry string) http.Handler {
	for _, route := range routes {
		if route.Server.cfg.Serves(registry) {
			if route.Handler != nil {
				return route.Handler
			}
			return route.Server
		}
	}
	return nil
}

// prefixLinks puts the registry's path prefix, or its ns, back into the
// Link headers of paginated answers (tags/list, _catalog): the upstream's
// server wrote them for its own paths, and a client following one must come
// back here, to the same upstream.
type prefixLinks struct {
	http.ResponseWriter
	prefix string
	ns     string
	done   bool
}

func (p *prefixLinks) fix() {
	if p.done {
		return
	}
	p.done = true
	h := p.ResponseWriter.Header()
	if links := h.Values("Link"); len(links) > 0 {
		h.Del("Link")
		for _, l := range links {
			if p.ns != "" {
				h.Add("Link", withNs(l, p.ns))
				continue
			}
			h.Add("Link", strings.ReplaceAll(l, "</v2/", "<"+p.prefix))
		}
	}
}

func (p *prefixLinks) WriteHeader(code int) {
	p.fix()
	p.ResponseWriter.WriteHeader(code)
}

func (p *prefixLinks) Write(b []byte) (int, error) {
	p.fix()
	return p.ResponseWriter.Write(b)
}

// ReadFrom keeps sendfile for blobs served from the store.
func (p *prefixLinks) ReadFrom(src io.Reader) (int64, error) {
	p.fix()
	return io.Copy(p.ResponseWriter, src)
}

func (p *prefixLinks) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// withNs adds ns to the query of every /v2/ URL in a Link value that lacks
// one (distribution's _catalog writes its next page's query afresh).
func withNs(link, ns string) string {
	var b strings.Builder
	for {
		i := strings.Index(link, "</v2/")
		if i < 0 {
			b.WriteString(link)
			return b.String()
		}
		j := strings.IndexByte(link[i:], '>')
		if j < 0 {
			b.WriteString(link)
			return b.String()
		}
		b.WriteString(link[:i+1])
		ref := link[i+1 : i+j]
		if u, err := url.Parse(ref); err == nil && u.Query().Get("ns") == "" {
			q := u.Query()
			q.Set("ns", ns)
			u.RawQuery = q.Encode()
			ref = u.String()
		}
		b.WriteString(ref)
		link = link[i+j:]
	}
}
