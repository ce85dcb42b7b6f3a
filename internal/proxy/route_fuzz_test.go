package proxy

import (
	"strings"
	"testing"
)

// kindSegment is the path segment that names each kind with a reference
// after it, as in /v2/<repo>/manifests/<ref>.
var kindSegment = map[string]string{
	kindManifest: "manifests",
	kindBlob:     "blobs",
	kindRefs:     "referrers",
}

// FuzzParseRoute checks parseRoute against the distribution API's grammar:
// a tag or digest never holds a slash, so the last segment is the
// reference and the one before it the kind, whatever the repository is
// called. A repository may itself be named org/referrers/app or
// org/manifests/app, and its pulls must still route as pulls.
func FuzzParseRoute(f *testing.F) {
	for _, p := range []string{
		"/v2/", "/v2", "/v2/library/alpine/manifests/3.20",
		"/v2/library/alpine/manifests/sha256:" + strings.Repeat("ab", 32),
		"/v2/library/alpine/blobs/sha256:" + strings.Repeat("cd", 32),
		"/v2/org/team/app/tags/list",
		"/v2/org/app/referrers/sha256:" + strings.Repeat("ef", 32),
		"/v2/org/app/blobs/uploads/", "/v2/org/app/blobs/uploads/0b3f-uuid", "/v2/org/app/blobs/uploads",
		"/v2/_catalog", "/v1/search", "/", "",
		"/v2/org/referrers/app/manifests/1",
		"/v2/org/manifests/app/blobs/sha256:" + strings.Repeat("01", 32),
		"/v2/a/blobs/b/referrers/sha256:00",
		"/v2/a/manifests/tags/list",
		"/v2//manifests/x", "/v2//tags/list", "/v2/manifests/x", "/v2/a/manifests/",
		"/v2/a/manifests/b/c",
	} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		route := parseRoute(path)

		if (route.kind == kindBase) != (path == "/v2/" || path == "/v2") {
			t.Fatalf("parseRoute(%q).kind = %q: only /v2/ is the base", path, route.kind)
		}
		rest, api := strings.CutPrefix(path, "/v2/")
		if !api && route.kind != kindBase && route.kind != kindOther {
			t.Fatalf("parseRoute(%q) = %+v outside /v2/", path, route)
		}

		switch route.kind {
		case kindManifest, kindBlob, kindRefs:
			if want := "/v2/" + route.repo + "/" + kindSegment[route.kind] + "/" + route.ref; path != want {
				t.Fatalf("parseRoute(%q) = %+v, which is the path %q", path, route, want)
			}
			if strings.Contains(route.ref, "/") {
				t.Fatalf("parseRoute(%q) = %+v: a tag or digest never holds a slash", path, route)
			}
		case kindTags:
			if path != "/v2/"+route.repo+"/tags/list" {
				t.Fatalf("parseRoute(%q) = %+v, which is not its tags/list", path, route)
			}
		case kindUpload:
			tail, ok := strings.CutPrefix(path, "/v2/"+route.repo+"/blobs/uploads")
			if !ok || (tail != "" && (tail[0] != '/' || strings.Contains(tail[1:], "/"))) {
				t.Fatalf("parseRoute(%q) = %+v, which is not its blobs/uploads", path, route)
			}
		case kindBase, kindOther:
			if route.repo != "" || route.ref != "" {
				t.Fatalf("parseRoute(%q) = %+v names a repository", path, route)
			}
		default:
			t.Fatalf("parseRoute(%q): unknown kind %q", path, route.kind)
		}
		// Every kind that names a repository names a non-empty one: an
		// empty name would reach the upstream as /v2//....
		if route.kind != kindBase && route.kind != kindOther && route.repo == "" {
			t.Fatalf("parseRoute(%q) = %+v with no repository", path, route)
		}

		// The other direction: a path the grammar gives a kind gets it.
		if !api {
			return
		}
		dir, last, ok := cutLast(rest, "/")
		if !ok {
			return
		}
		for kind, seg := range kindSegment {
			repo, ok := strings.CutSuffix(dir, "/"+seg)
			if !ok || repo == "" || (kind == kindBlob && last == "uploads") {
				continue
			}
			if want := (apiRoute{kind: kind, repo: repo, ref: last}); route != want {
				t.Fatalf("parseRoute(%q) = %+v, want %+v", path, route, want)
			}
		}
	})
}

// cutLast is strings.Cut at the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
