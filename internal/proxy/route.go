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

// apiRoute is the part of a /v2/ request path the guard and cache need.
type apiRoute struct {
	kind string
	repo string
	ref  string // tag or digest for manifests, digest for blobs
}

var tagPattern = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// repoPattern is the repository name grammar of the OCI distribution spec.
// distribution's reference.WithName also takes a first component that
// looks like a registry host, port included (127.0.0.1:7005/library/app),
// which no upstream API path can carry: distribution itself answers such a
// name with a 500 from its storage, and other registries with whatever they
// do. It is a client's mistake, answered 400 NAME_INVALID like any other
// name outside the grammar, and never sent upstream.
var repoPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// parseRoute splits an OCI distribution API path. Repository names may hold
// slashes, even segments called manifests, blobs or referrers
// (org/referrers/app), but tags and digests never do: the last segment is
// the reference and the one before it the kind, as in distribution's router.
func parseRoute(path string) apiRoute {
	if path == "/v2/" || path == "/v2" {
		return apiRoute{kind: kindBase}
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return apiRoute{kind: kindOther}
	}
	if repo, ok := strings.CutSuffix(rest, "/tags/list"); ok && repo != "" {
		return apiRoute{kind: kindTags, repo: repo}
	}
	i := strings.LastIndex(rest, "/")
	if i < 0 {
		return apiRoute{kind: kindOther}
	}
	dir, ref := rest[:i], rest[i+1:]
	// An upload's session is /blobs/uploads/<uuid>, or /blobs/uploads[/]
	// to start one.
	if repo, ok := strings.CutSuffix(dir, "/blobs/uploads"); ok && repo != "" {
		return apiRoute{kind: kindUpload, repo: repo}
	}
	if repo, ok := strings.CutSuffix(dir, "/blobs"); ok && repo != "" && ref == "uploads" {
		return apiRoute{kind: kindUpload, repo: repo}
	}
	for _, k := range []struct{ seg, kind string }{
		{"/manifests", kindManifest}, {"/blobs", kindBlob}, {"/referrers", kindRefs},
	} {
		if repo, ok := strings.CutSuffix(dir, k.seg); ok && repo != "" {
			return apiRoute{kind: k.kind, repo: repo, ref: ref}
		}
	}
	return apiRoute{kind: kindOther}
}
