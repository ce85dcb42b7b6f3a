package differential

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

const corpusRepo = "conformance/corpus"

// Manifest media types, and the Accept headers clients send.
const (
	mtOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mtOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

var accepts = []struct{ name, header string }{
	{"every type", strings.Join([]string{mtOCIManifest, mtOCIIndex, mtDockerManifest, mtDockerList}, ", ")},
	{"OCI only", mtOCIManifest + ", " + mtOCIIndex},
	{"Docker only", mtDockerManifest + ", " + mtDockerList},
	{"no Accept", ""},
}

// difference is one field a client reads that the cache answered otherwise
// than the upstream.
type difference struct {
	pass, what, field, upstream, cache string
	allowed                            string // the reason, if allowed
}

// exchange is one field of one request that the cache answered otherwise
// than the upstream.
type exchange struct {
	pass   string
	q      request
	up     *ts.Upstream
	field  string
	uA, pA answer // the upstream's and the cache's answers
}

// allowance is a difference the cache may make, and why.
type allowance struct {
	reason string
	covers func(x exchange) bool
}

// allowed lists every way the cache's answers may differ from the
// upstream's; any other difference fails the test, and so does an
// allowance no difference needed on any profile, so that the list (and the
// README's, which says the same) stays true.
var allowed = []allowance{
	{
		reason: "distribution has no route for a repository name with ':' (a plain-text 404; a front: NAME_UNKNOWN); the cache says 400 NAME_INVALID, which is what the name is",
		covers: func(x exchange) bool {
			return strings.Contains(x.q.repo, ":") && x.uA.status == http.StatusNotFound &&
				x.pA.status == http.StatusBadRequest && (x.pA.body == "error NAME_INVALID" || x.q.method == http.MethodHead)
		},
	},
	{
		reason: "the upstream has no referrers API (404); the cache answers from the tag schema, as the spec asks of a registry without the API",
		covers: func(x exchange) bool {
			return x.q.kind == "referrer" && x.uA.status == http.StatusNotFound && x.pA.status == http.StatusOK
		},
	},
	{
		reason: "error messages are each server's own words (the OCI error codes are compared), so error bodies differ in length",
		covers: func(x exchange) bool {
			return x.field == "Content-Length" && x.uA.status >= 400 && x.uA.status == x.pA.status && x.uA.body == x.pA.body
		},
	},
	{
		reason: "a CDN serves the upstream's blobs and names no digest (nor does the registry's redirect); the cache serves them itself and says Docker-Content-Digest",
		covers: func(x exchange) bool {
			return x.field == "Docker-Content-Digest" && x.up.CDN != nil && x.q.kind == "blob" &&
				x.uA.digest == "" && x.pA.digest == x.q.ref
		},
	},
	{
		reason: "distribution names a sha512 blob by its sha256 digest in Docker-Content-Digest; the cache names it by the digest asked for, the one a client verifies",
		covers: func(x exchange) bool {
			return x.field == "Docker-Content-Digest" && x.q.kind == "blob" && strings.HasPrefix(x.q.ref, "sha512:") &&
				strings.HasPrefix(x.uA.digest, "sha256:") && x.pA.digest == x.q.ref
		},
	},
	{
		reason: "behind a front that redirects under a prefix (registry.k8s.io), the upstream's tag list names the backend's repository; the cache names the one the client asked for",
		covers: func(x exchange) bool {
			return x.q.kind == "tags" && (x.field == "Content-Length" || x.field == "body") && x.uA.status == http.StatusOK &&
				x.uA.list == x.pA.list && x.uA.listName == x.up.StoredRepo(x.pA.listName)
		},
	},
	{
		reason: "a blob the cache holds is served under any repository name, even one the upstream does not have (README, Security: strangers' names); the upstream scopes blobs to the repositories that link them",
		covers: func(x exchange) bool {
			return x.q.kind == "blob" && strings.HasPrefix(x.q.repo, "nosuch/") && x.pA.status == http.StatusOK &&
				x.uA.status == http.StatusNotFound
		},
	},
}

// slowUpstream is up as the proxy's upstream "up", with a timeout for a
// hang only: under the race detector on a loaded machine the registry takes
// seconds over the large manifest, and the 1 s the tests' proxies default
// to would turn that into a 503 no user would see.
func slowUpstream(up *ts.Upstream) ts.ProxyUpstream {
	u := up.ProxyUpstream("up")
	u.Tweak = func(c *config.Upstream) { c.Timeout = 30 * time.Second }
	return u
}

func TestDifferential(t *testing.T) {
	// Which allowances were needed, over every profile: the profiles run
	// one after the other.
	used := map[string]int{}
	complete := 0
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		c := up.PushCorpus(t, corpusRepo)
		p := ts.StartProxy(t, slowUpstream(up))
		upc := newClient(up.URL, up.Tokens != nil)
		pxc := newClient(p.URL("up"), false)
		// The large manifest's path through the cache is the same
		// whatever the upstream's auth; one profile asks for it.
		reqs := requests(c, up.Profile.Name == "plain")

		var diffs []difference
		for _, pass := range []string{"cold", "warm"} {
			// The cache is asked everything first, so that what reaches
			// the upstream meanwhile is the cache's doing alone.
			up.Faults.ResetCounts()
			pas := make([]answer, len(reqs))
			for i, q := range reqs {
				pas[i] = pxc.do(t, q)
			}
			if pass == "warm" {
				requireServedFromStore(t, up, c)
			}
			for i, q := range reqs {
				pa, ua := pas[i], upc.do(t, q)
				for _, f := range fields {
					uv, pv := ua.field(f), pa.field(f)
					if uv == pv {
						continue
					}
					d := difference{pass: pass, what: q.what, field: f, upstream: uv, cache: pv}
					x := exchange{pass: pass, q: q, up: up, field: f, uA: ua, pA: pa}
					for _, a := range allowed {
						if a.covers(x) {
							d.allowed = a.reason
							break
						}
					}
					diffs = append(diffs, d)
				}
			}
			// Clients get a blob's last byte before its fill commits; the
			// warm pass must find everything cached.
			p.Settle(t)
		}
		for r, n := range report(t, len(reqs), diffs) {
			used[r] += n
		}
		complete++
	})
	// Only a run of every profile to its end can tell an allowance is
	// needed nowhere (-run may pick one profile; a t.Fatal stops one
	// short).
	if complete != len(ts.Profiles()) {
		return
	}
	for _, a := range allowed {
		if used[a.reason] == 0 {
			t.Errorf("an allowed difference no profile made, cold or warm: delete it from the list (and the README's): %s", a.reason)
		}
	}
}

// requireServedFromStore fails the test if the warm pass, just asked of the
// cache, sent the upstream any request for a blob or a manifest by digest
// of the corpus, or a GET of a manifest by one of its tags. The cache holds
// all of those, and a digest names content that cannot change; a tag may
// be revalidated, per the upstream's tag_freshness, but with a HEAD only:
// it still names the manifest the cache holds. (Unknown names, tags and
// digests are asked again: the cache keeps no negative answers; so are tag
// lists and referrers.)
func requireServedFromStore(t *testing.T, up *ts.Upstream, c *ts.Corpus) {
	t.Helper()
	byDigest := map[string]bool{}
	for _, d := range c.BlobDigests() {
		byDigest["blobs/"+d] = true
	}
	for _, d := range c.ManifestDigests() {
		byDigest["manifests/"+d] = true
	}
	byTag := map[string]bool{}
	for _, tag := range c.Tags() {
		byTag["manifests/"+tag] = true
	}
	var bad []string
	others := map[string]int{}
	for _, r := range up.Faults.Requests() {
		method, path, _ := strings.Cut(r, " ")
		what := "other"
		if m := apiPath.FindStringSubmatch(strings.TrimPrefix(path, "/v2/")); m != nil {
			what = m[2] + "/" + m[3]
		} else if tagsPath.MatchString(strings.TrimPrefix(path, "/v2/")) {
			what = "tags/list"
		}
		switch {
		case byDigest[what], byTag[what] && method != http.MethodHead:
			bad = append(bad, r)
			continue
		case byTag[what]:
			what = "manifests/<corpus tag>"
		case what != "other" && what != "tags/list":
			what, _, _ = strings.Cut(what, "/")
			what += "/…"
		}
		others[method+" "+what]++
	}
	if len(bad) > 0 {
		t.Errorf("warm pass: %d upstream requests for what the cache holds (blobs and manifests by digest: none; manifests by tag: a HEAD at most): %v", len(bad), bad)
	}
	t.Logf("warm pass: the other upstream requests: %v", others)
}

// report fails the test with a table of the differences not allowed, logs
// the allowed ones with their reasons, and returns how many each allowance
// covered.
func report(t *testing.T, n int, diffs []difference) map[string]int {
	t.Helper()
	var bad, ok strings.Builder
	tb := tabwriter.NewWriter(&bad, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tb, "pass\trequest\tfield\tupstream\tcache")
	reasons := map[string]int{}
	nbad := 0
	for _, d := range diffs {
		if d.allowed != "" {
			reasons[d.allowed]++
			continue
		}
		nbad++
		fmt.Fprintf(tb, "%s\t%s\t%s\t%s\t%s\n", d.pass, d.what, d.field, show(d.upstream), show(d.cache))
	}
	_ = tb.Flush()
	for _, a := range allowed {
		if reasons[a.reason] > 0 {
			fmt.Fprintf(&ok, "\n  %3d × %s", reasons[a.reason], a.reason)
		}
	}
	t.Logf("%d requests, cold then warm; allowed differences:%s", n, ok.String())
	if nbad > 0 {
		t.Errorf("%d differences between the cache and the upstream that no allowance covers:\n%s", nbad, bad.String())
	}
	return reasons
}

func show(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// requests lists every question the suite asks, grouped by item. Within a
// group the order rotates, so that across the corpus each kind of request
// is the cold one for some item.
func requests(c *ts.Corpus, large bool) []request {
	var out []request
	add := func(group []request, rot int) {
		for i := range group {
			out = append(out, group[(i+rot)%len(group)])
		}
	}
	repo := c.Repo
	for i, m := range c.Manifests {
		var group []request
		refs := []string{m.Digest}
		if m.Tag != "" {
			refs = append(refs, m.Tag)
		}
		methods := []string{http.MethodGet, http.MethodHead}
		if m.Size > 1<<20 {
			// Each answer of the large manifest costs the race detector
			// seconds; its size is the point, and the other manifests
			// cover the methods, Accept headers and digest lookups.
			if !large {
				continue
			}
			methods, refs = methods[:1], refs[1:]
		}
		for _, ref := range refs {
			by := "digest"
			if ref == m.Tag {
				by = "tag " + ref
			}
			for _, method := range methods {
				for _, a := range accepts {
					if m.Size > 1<<20 && a.header != accepts[0].header {
						continue
					}
					if method == http.MethodHead && a.header != accepts[0].header && a.header != "" {
						// A HEAD negotiates as its GET does; every type
						// and none are the two that matter.
						continue
					}
					group = append(group, request{
						item:   m.Digest,
						what:   fmt.Sprintf("%s %s by %s, %s", method, m.Name, by, a.name),
						method: method,
						path:   repo + "/manifests/" + ref,
						accept: a.header,
					})
				}
			}
		}
		add(group, i)
	}
	for i, b := range c.Blobs {
		var group []request
		blob := func(method, rng, label string) {
			group = append(group, request{
				item:   b.Digest,
				what:   fmt.Sprintf("%s blob %s (%d bytes)%s", method, b.Name, b.Size, label),
				method: method,
				path:   repo + "/blobs/" + b.Digest,
				rng:    rng,
			})
		}
		blob(http.MethodGet, "", "")
		blob(http.MethodHead, "", "")
		for _, rng := range []string{"bytes=0-99", "bytes=10-", "bytes=-5", fmt.Sprintf("bytes=%d-", b.Size+10), "bytes=0-9,20-29"} {
			blob(http.MethodGet, rng, ", Range: "+rng)
		}
		// A client resuming a download sends the ETag it had with
		// If-Range: the blob's own gets the range, another entity's the
		// whole blob. (Each server's own: distribution names a sha512
		// blob's entity by a sha256 digest, the cache by the sha512.)
		for _, ir := range []struct{ label, value string }{
			{"its ETag", ownETag},
			{"another entity", `"sha256:` + strings.Repeat("0", 64) + `"`},
		} {
			blob(http.MethodGet, "bytes=10-", ", Range: bytes=10-, If-Range: "+ir.label)
			group[len(group)-1].ifRange = ir.value
		}
		add(group, i)
	}

	tags := c.Tags()
	list := func(query string) request {
		path := repo + "/tags/list"
		if query != "" {
			path += "?" + query
		}
		return request{item: "tags", what: "GET tags/list?" + query, method: http.MethodGet, path: path}
	}
	out = append(out,
		list(""),
		list("n=3"),
		list("n=3&last="+url.QueryEscape(tags[2])),
		list("last="+url.QueryEscape(tags[len(tags)/2])),
		list("n=1000"),
		list("n=0"),
		list("n=-5"),
	)

	for _, s := range c.Subjects {
		out = append(out,
			request{item: "referrers " + s, what: "GET referrers of " + s, method: http.MethodGet, path: repo + "/referrers/" + s},
			request{item: "referrers " + s, what: "GET referrers of " + s + " by artifactType", method: http.MethodGet,
				path: repo + "/referrers/" + s + "?artifactType=" + url.QueryEscape("application/vnd.example.signature.v1")},
		)
	}
	noRefs := c.Manifests[0].Digest
	out = append(out, request{item: "referrers none", what: "GET referrers of a manifest with none", method: http.MethodGet, path: repo + "/referrers/" + noRefs})

	unknownDigest := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	unknown := func(what, method, path string) {
		out = append(out, request{item: "unknown " + path, what: method + " " + what, method: method, path: path})
	}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		unknown("manifest of an unknown repository", method, "nosuch/repo/manifests/latest")
		unknown("manifest by digest of an unknown repository", method, "nosuch/repo/manifests/"+unknownDigest)
		unknown("blob of an unknown repository", method, "nosuch/repo/blobs/"+unknownDigest)
		unknown("unknown tag", method, repo+"/manifests/nosuchtag")
		unknown("unknown manifest digest", method, repo+"/manifests/"+unknownDigest)
		unknown("unknown blob digest", method, repo+"/blobs/"+unknownDigest)
		unknown("manifest by an invalid digest", method, repo+"/manifests/sha256:baddigeststring")
		unknown("blob by an invalid digest", method, repo+"/blobs/sha256:baddigeststring")
		unknown("blob a known blob's digest in an unknown repository", method, "nosuch/repo/blobs/"+c.Blobs[0].Digest)
		unknown("manifest in a repository named with ':'", method, repo+":x/manifests/image")
		for _, f := range c.Foreign {
			unknown("non-distributable layer (never pushed) "+f[:19], method, repo+"/blobs/"+f)
		}
	}
	unknown("tags/list of an unknown repository", http.MethodGet, "nosuch/repo/tags/list")
	unknown("referrers in an unknown repository", http.MethodGet, "nosuch/repo/referrers/"+unknownDigest)
	unknown("blob in a repository named with ':'", http.MethodGet, repo+":x/blobs/"+c.Blobs[0].Digest)
	unknown("tags/list of a repository named with ':'", http.MethodGet, repo+":x/tags/list")
	for i := range out {
		out[i].parse()
	}
	return out
}

var (
	apiPath  = regexp.MustCompile(`^(.+)/(manifests|blobs|referrers)/([^/?]+)`)
	tagsPath = regexp.MustCompile(`^(.+)/tags/list`)
)

// parse sets kind, repo and ref from path.
func (q *request) parse() {
	if m := apiPath.FindStringSubmatch(q.path); m != nil {
		q.repo, q.kind, q.ref = m[1], strings.TrimSuffix(m[2], "s"), m[3]
	} else if m := tagsPath.FindStringSubmatch(q.path); m != nil {
		q.repo, q.kind = m[1], "tags"
	}
}
