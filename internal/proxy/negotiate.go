package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/manifest/manifestlist"
	"github.com/distribution/distribution/v3/manifest/schema2"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/cache"
)

// A cache must answer a manifest request as its upstream would, whatever
// the request accepts: the cache always fetches with every manifest type
// accepted, so what the client may be given is decided here, from the
// stored manifest's media type, by distribution's rules
// (registry/handlers/manifests.go GetManifest in distribution v3):
//
//   - an If-None-Match naming the digest is answered 304 before anything
//     else;
//   - an OCI image manifest needs an Accept that lists its type, or the
//     answer is 404 MANIFEST_UNKNOWN;
//   - a Docker manifest list asked for by tag without an Accept that
//     lists its type is replaced by its linux/amd64 manifest, which in
//     turn, if a Docker schema 2 manifest, needs its own type accepted (400
//     MANIFEST_INVALID otherwise);
//   - everything else (Docker schema 2 manifests, OCI indexes, manifest
//     lists by digest) is served whatever the Accept. distribution has an
//     Accept check for OCI indexes too, but its storage hands the handler
//     an index of a type that check never matches, so an upstream running
//     distribution serves an index to any Accept; so do we.
//
// A request without an Accept header accepts none of these types.

// accepted says which manifest types a request's Accept headers list,
// parsed as distribution does: comma-separated media types, parameters
// (q=) ignored, wildcards not expanded.
type accepted struct {
	schema2, list, oci bool
}

func acceptOf(h http.Header) accepted {
	var a accepted
	for _, value := range h.Values("Accept") {
		for part := range strings.SplitSeq(value, ",") {
			mt, _, err := mime.ParseMediaType(part)
			if err != nil {
				continue
			}
			switch mt {
			case schema2.MediaTypeManifest:
				a.schema2 = true
			case manifestlist.MediaTypeManifestList:
				a.list = true
			case v1.MediaTypeImageManifest:
				a.oci = true
			}
		}
	}
	return a
}

// answerManifest answers with manifest m (digest d) as distribution would
// for this request's Accept and If-None-Match. byTag tells a request by tag,
// for which distribution replaces a manifest list the client cannot take.
func (s *Server) answerManifest(w *recorder, r *http.Request, repo string, d digest.Digest, m *cache.Manifest, byTag bool) {
	if etagMatch(r, d) {
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	acc := acceptOf(r.Header)
	switch m.MediaType {
	case v1.MediaTypeImageManifest:
		if !acc.oci {
			writeRegistryError(w, errcode.ErrorCodeManifestUnknown.WithMessage("OCI manifest found, but accept header does not support OCI manifests"))
			return
		}
	case manifestlist.MediaTypeManifestList:
		if !byTag || acc.list {
			break
		}
		// An old client (Docker before 1.10, or a bare curl): distribution
		// gives it the image for its default platform.
		child, ok := defaultPlatform(m.Body)
		if !ok {
			writeRegistryError(w, errcode.ErrorCodeManifestUnknown)
			return
		}
		cm, err := s.cache.EnsureManifest(r.Context(), repo, child)
		if err == nil && cm == nil {
			cm, err = s.readManifest(r, repo, child)
		}
		if err != nil {
			s.writeUpstreamError(w, r, err, kindManifest)
			return
		}
		if cm.MediaType == schema2.MediaTypeManifest && !acc.schema2 {
			writeRegistryError(w, errcode.ErrorCodeManifestInvalid.WithMessage("Schema 2 manifest not supported by client"))
			return
		}
		d, m = child, cm
	}
	serveManifestBytes(w, r, d, m)
}

// defaultPlatform finds the linux/amd64 entry of a manifest list, the first
// one as distribution takes it.
func defaultPlatform(list []byte) (digest.Digest, bool) {
	var l struct {
		Manifests []struct {
			Digest   digest.Digest `json:"digest"`
			Platform struct {
				Architecture string `json:"architecture"`
				OS           string `json:"os"`
			} `json:"platform"`
		} `json:"manifests"`
	}
	if json.Unmarshal(list, &l) != nil {
		return "", false
	}
	for _, m := range l.Manifests {
		if m.Platform.Architecture == "amd64" && m.Platform.OS == "linux" {
			return m.Digest, m.Digest != ""
		}
	}
	return "", false
}

// etagMatch is distribution's: the digest, quoted or not.
func etagMatch(r *http.Request, d digest.Digest) bool {
	for _, v := range r.Header.Values("If-None-Match") {
		if v == d.String() || v == `"`+d.String()+`"` {
			return true
		}
	}
	return false
}

// readManifest reads manifest d from the store. The manifest can vanish
// between the cache's check and this read (a store removed underneath us,
// an eviction), or the store can fail to read it (a store half deleted):
// the cache has just vouched for it, so it is fetched again and served
// from the verified bytes. A manifest the store holds is never fetched
// again, whatever the request accepts.
func (s *Server) readManifest(r *http.Request, repo string, d digest.Digest) (*cache.Manifest, error) {
	m, err := s.cache.StoredManifest(r.Context(), repo, d)
	if err == nil {
		return m, nil
	}
	if r.Context().Err() != nil {
		return nil, r.Context().Err()
	}
	s.log.Warn("stored manifest lost; fetching it again", "repository", repo, "digest", d, "err", err)
	return s.cache.FetchManifest(r.Context(), repo, d)
}

// writeRegistryError answers as distribution's handlers answer err, byte
// for byte (errcode.ServeJSON), for answers a client compares with the
// upstream's own.
func writeRegistryError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	if c, ok := err.(errcode.ErrorCoder); ok {
		status = c.ErrorCode().Descriptor().HTTPStatusCode
	}
	var body bytes.Buffer
	if jerr := json.NewEncoder(&body).Encode(errcode.Errors{err}); jerr != nil {
		writeError(w, http.StatusInternalServerError, codeUnknown, fmt.Sprintf("encode error answer: %v", jerr))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(status)
	_, _ = w.Write(body.Bytes())
}
