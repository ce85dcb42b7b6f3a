package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// serveReferrers answers the OCI referrers API (signatures, attestations)
// from the upstream's API or tag schema, stale when the upstream fails.
func (s *Server) serveReferrers(w *recorder, r *http.Request, route apiRoute) {
	d, err := digest.Parse(route.ref)
	if err != nil {
		writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
		return
	}
	refs, err := s.cache.Referrers(r.Context(), route.repo, d, r.URL.Query().Get("artifactType"))
	if err != nil {
		s.writeUpstreamError(w, r, err, kindManifest)
		return
	}
	if refs.Filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeListing(w, r, "application/vnd.oci.image.index.v1+json", refs.Body, refs.Stale, refs.Cause)
}

// writeListing answers with a list made by the cache (tags, referrers),
// marked stale when the upstream could not confirm it.
func writeListing(w *recorder, r *http.Request, mediaType string, body []byte, stale bool, cause upstream.Cause) {
	h := w.Header()
	if stale {
		w.stale = true
		h.Set("Warning", staleWarning(cause))
	}
	h.Set("Content-Type", mediaType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// serveTags passes a tag list through from the upstream, or from the cached
// tags, marked stale, when the upstream fails.
func (s *Server) serveTags(w *recorder, r *http.Request, route apiRoute) {
	q := r.URL.Query()
	if n := q.Get("n"); n != "" {
		// Checked here as distribution checks it: passed on, a bad n gets
		// the upstream's 400, which the cache would take for a failing
		// upstream and answer with its cached tags instead.
		parsed, err := strconv.Atoi(n)
		if err != nil || parsed < 0 {
			writeRegistryError(w, errcode.ErrorCodePaginationNumberInvalid.WithDetail(map[string]int{"n": parsed}))
			return
		}
	}
	// ns names this cache's upstream to this cache; the upstream has no
	// use for it. The next page's link keeps it: in one-port mode it is
	// how the following request finds this upstream again.
	ns := q.Get("ns")
	q.Del("ns")
	list, err := s.cache.ListTags(r.Context(), route.repo, q.Encode())
	if err != nil {
		s.writeUpstreamError(w, r, err, kindTags)
		return
	}
	w.fromUpstream = !list.Stale
	if list.Next != "" {
		next := list.Next
		if ns != "" {
			v, _ := url.ParseQuery(next) // encoded by the cache from parsed values
			v.Set("ns", ns)
			next = v.Encode()
		}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next))
	}
	writeListing(w, r, "application/json", list.Body, list.Stale, list.Cause)
}

// staleWarning is the Warning header of an answer the upstream could not
// confirm (RFC 9111's 110), naming why: clients and proxies that know the
// code show it, and the cause tells an operator which failure it was.
func staleWarning(cause upstream.Cause) string {
	return fmt.Sprintf(`110 multiproxy "Response is Stale: upstream %s"`, cause)
}
