package proxy

import (
	"regexp"
	"strings"
)

// Kinds of request, as logged and labelled in metrics.
const (
	kindBase     = "base"
	kindManifest = "manifest"
	kindBlob     = "blob"
	kindTags     = "tags"
	kindUpload   = "upload"
	kindRefs     = "referrers"
	kindOther    = "other"
)

// route is the part of a /v2/ request path the guard and cache need.
type route struct {
	kind string
	repo string
	ref  string // tag or digest for manifests, digest for blobs
}

var tagPattern = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// parseRoute splits an OCI distribution API path. Repository names may hold
// slashes, so the kind is found from the right, as distribution's router does.
func parseRoute(path string) route {
	if path == "/v2/" || path == "/v2" {
		return route{kind: kindBase}
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{kind: kindOther}
	}
	if repo, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return route{kind: kindTags, repo: repo}
	}
	if i := strings.LastIndex(rest, "/referrers/"); i > 0 {
		return route{kind: kindRefs, repo: rest[:i], ref: rest[i+len("/referrers/"):]}
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		return route{kind: kindManifest, repo: rest[:i], ref: rest[i+len("/manifests/"):]}
	}
	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		ref := rest[i+len("/blobs/"):]
		if strings.HasPrefix(ref, "uploads") {
			return route{kind: kindUpload, repo: rest[:i]}
		}
		return route{kind: kindBlob, repo: rest[:i], ref: ref}
	}
	return route{kind: kindOther}
}
