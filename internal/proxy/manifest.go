package proxy

import (
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
)

func (s *Server) serveManifest(w *recorder, r *http.Request, route apiRoute) {
	ctx := r.Context()
	// From the lookup to the store's read, a collection must not remove the
	// manifest it resolved to.
	release := s.cache.Hold()
	defer release()
	var mem *cache.Manifest
	d, err := digest.Parse(route.ref)
	byTag := err != nil
	if byTag {
		if !tagPattern.MatchString(route.ref) {
			if looksLikeDigest(route.ref) {
				writeError(w, http.StatusBadRequest, codeDigestInvalid, "invalid digest")
			} else {
				writeError(w, http.StatusBadRequest, codeTagInvalid, "invalid tag")
			}
			return
		}
		res, err := s.cache.ResolveTag(ctx, route.repo, route.ref)
		if err != nil {
			s.writeUpstreamError(w, r, err, kindManifest)
			return
		}
		if res.Stale {
			w.stale = true
			w.Header().Set("Warning", staleWarning(res.Cause))
		}
		w.tagRule = res.Rule
		d, mem = res.Digest, res.Manifest
	} else if mem, err = s.cache.EnsureManifest(ctx, route.repo, d); err != nil {
		s.writeUpstreamError(w, r, err, kindManifest)
		return
	}
	if mem == nil {
		// Read here, not through the App: what the request may be given
		// depends on the stored manifest's type (answerManifest), and an
		// App's 404 could not tell a manifest the client does not accept
		// from one the store lost.
		if mem, err = s.readManifest(r, route.repo, d); err != nil {
			s.writeUpstreamError(w, r, err, kindManifest)
			return
		}
	}
	s.answerManifest(w, r, route.repo, d, mem, byTag)
}

// serveManifestBytes answers with verified manifest bytes, from the store
// or from memory, with the headers distribution's manifest handler sets.
func serveManifestBytes(w http.ResponseWriter, r *http.Request, d digest.Digest, m *cache.Manifest) {
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Content-Length", strconv.Itoa(len(m.Body)))
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.Body)
	}
}

func looksLikeDigest(ref string) bool {
	for _, c := range ref {
		if c == ':' {
			return true
		}
	}
	return false
}
