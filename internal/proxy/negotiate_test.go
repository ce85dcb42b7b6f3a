package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/storelayout"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// answer is what a client can see of a manifest answer.
type answer struct {
	Status                                   int
	ContentType, Digest, ContentLength, Etag string
	Body                                     string
}

// ask sends a manifest request with the given Accept ("" for none) and
// If-None-Match, and returns what the client sees.
func ask(t *testing.T, method, url, accept, ifNoneMatch string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if ifNoneMatch != "" {
		req.Header.Set("If-None-Match", ifNoneMatch)
	}
	resp, err := getClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return answer{
		Status:        resp.StatusCode,
		ContentType:   resp.Header.Get("Content-Type"),
		Digest:        resp.Header.Get("Docker-Content-Digest"),
		ContentLength: resp.Header.Get("Content-Length"),
		Etag:          resp.Header.Get("Etag"),
		Body:          string(body),
	}
}

func push(t *testing.T, up *ts.Registry, repoTag string, x remote.Taggable) {
	t.Helper()
	ref, err := name.ParseReference(up.Ref(repoTag), name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	switch x := x.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, x, up.RemoteOptions()...)
	case v1.Image:
		err = remote.Write(ref, x, up.RemoteOptions()...)
	}
	if err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
}

// pushDockerImage pushes a Docker schema 2 image (go-containerregistry's
// default media types).
func pushDockerImage(t *testing.T, up *ts.Registry, repoTag string) v1.Image {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	push(t, up, repoTag, img)
	return img
}

// pushDockerList pushes a Docker manifest list with one schema 2 image
// for linux on each of archs.
func pushDockerList(t *testing.T, up *ts.Registry, repoTag string, archs ...string) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, arch := range archs {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	push(t, up, repoTag, idx)
	return idx
}

func childDigests(t *testing.T, idx v1.ImageIndex) []string {
	t.Helper()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var ds []string
	for _, d := range m.Manifests {
		ds = append(ds, d.Digest.String())
	}
	return ds
}

// A client must not tell the cache from its upstream by how a manifest is
// negotiated: for every manifest type, every Accept (none at all
// included), by tag and by digest, GET and HEAD, the cache answers what the
// upstream answers (status, headers, bytes, error code), from its store,
// with no upstream request. An OCI manifest asked for without an Accept
// that allows it is the upstream's 404, not a lost manifest fetched again
// (a Docker Hub pull each time) and answered 200.
func TestManifestNegotiationMatchesUpstreamFromTheStore(t *testing.T) {
	up, f := faultyUpstream(t)
	type image struct {
		repo, digest string
		children     []string
	}
	oci := ts.PushImage(t, up, "library/oci:1", 1, 1024)
	index := ts.PushIndex(t, up, "library/index:1")
	docker := pushDockerImage(t, up, "library/docker:1")
	list := pushDockerList(t, up, "library/list:1", "arm64", "amd64")
	armOnly := pushDockerList(t, up, "library/armonly:1", "arm64")
	images := []image{
		{"library/oci", ts.Digest(t, oci), nil},
		{"library/index", ts.Digest(t, index), childDigests(t, index)},
		{"library/docker", ts.Digest(t, docker), nil},
		{"library/list", ts.Digest(t, list), childDigests(t, list)},
		{"library/armonly", ts.Digest(t, armOnly), childDigests(t, armOnly)},
	}
	// Tags stay fresh for the test: a revalidation HEAD would be an
	// upstream request of its own, and the point is that none is made.
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up,
		Tweak: func(u *config.Upstream) { u.TagFreshness = time.Hour }})
	base := p.URL("docker.io")

	// Everything is cached first, as a containerd pull caches it.
	for _, im := range images {
		for _, ref := range append([]string{"1", im.digest}, im.children...) {
			if resp := get(t, base+"/v2/"+im.repo+"/manifests/"+ref, http.MethodGet); resp.StatusCode != http.StatusOK {
				t.Fatalf("caching %s:%s: %d", im.repo, ref, resp.StatusCode)
			}
		}
	}

	const (
		schema2  = "application/vnd.docker.distribution.manifest.v2+json"
		list2    = "application/vnd.docker.distribution.manifest.list.v2+json"
		ociImage = "application/vnd.oci.image.manifest.v1+json"
		ociIndex = "application/vnd.oci.image.index.v1+json"
	)
	accepts := []string{
		"",
		schema2 + ", " + list2,
		ociImage + ", " + ociIndex,
		schema2,
		list2,
		ociIndex,
		strings.Join(upstream.ManifestAccept, ", "),
		"*/*",
		ociImage + ";q=0.5, application/json",
	}
	var notAccepted int
	for _, im := range images {
		for _, ref := range []string{"1", im.digest} {
			path := "/v2/" + im.repo + "/manifests/" + ref
			for _, accept := range accepts {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					want := ask(t, method, up.URL()+path, accept, "")
					f.ResetCounts()
					got := ask(t, method, base+path, accept, "")
					what := fmt.Sprintf("%s %s:%s Accept %q", method, im.repo, ref, accept)
					if got != want {
						t.Errorf("%s:\n got  %+v\n want %+v (upstream)", what, got, want)
					}
					if n := f.Count("", "/manifests/"); n != 0 {
						t.Errorf("%s: %d upstream manifest requests, want 0: %v", what, n, f.Requests())
					}
					if want.Status == http.StatusNotFound {
						notAccepted++
					}
				}
			}
		}
	}
	// The upstream did refuse some: the comparison covered the case.
	if notAccepted == 0 {
		t.Fatal("the upstream answered no request 404: nothing was negotiated")
	}

	// A conditional request is answered 304 before any negotiation.
	for _, im := range images {
		for _, accept := range []string{"", ociImage} {
			for _, inm := range []string{im.digest, `"` + im.digest + `"`, "sha256:" + strings.Repeat("0", 64)} {
				path := "/v2/" + im.repo + "/manifests/1"
				want := ask(t, http.MethodGet, up.URL()+path, accept, inm)
				got := ask(t, http.MethodGet, base+path, accept, inm)
				if got != want {
					t.Errorf("GET %s If-None-Match %s Accept %q:\n got  %+v\n want %+v (upstream)", path, inm, accept, got, want)
				}
			}
		}
	}
}

// Only a manifest the store has lost is fetched again: after its revision
// link, or the file of its bytes, is removed, a request the client's Accept
// cannot take still fetches it (the upstream has it), then answers as the
// upstream does; and the manifest is stored again, so the next request is
// answered, right, from the store.
func TestLostManifestIsFetchedAgainThenNegotiated(t *testing.T) {
	for _, loss := range []struct {
		name string
		lose func(t *testing.T, p *ts.Proxy, repo, d string)
	}{
		{"revision link", removeStoredManifest},
		{"blob data", removeStoredBlobData},
	} {
		t.Run(loss.name, func(t *testing.T) {
			up, f := faultyUpstream(t)
			img := ts.PushImage(t, up, "library/app:1", 1, 1024)
			d := ts.Digest(t, img)
			p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
			base := p.URL("docker.io")
			if resp := get(t, base+"/v2/library/app/manifests/"+d, http.MethodGet); resp.StatusCode != http.StatusOK {
				t.Fatalf("caching: %d", resp.StatusCode)
			}
			loss.lose(t, p, "library/app", d)

			path := "/v2/library/app/manifests/" + d
			want := ask(t, http.MethodGet, up.URL()+path, "", "")
			f.ResetCounts()
			got := ask(t, http.MethodGet, base+path, "", "")
			if got != want {
				t.Errorf("lost manifest, no Accept:\n got  %+v\n want %+v (upstream)", got, want)
			}
			if n := f.Count("GET", "/manifests/"+d); n != 1 {
				t.Errorf("%d upstream GETs of the lost manifest, want 1", n)
			}
			want = ask(t, http.MethodGet, up.URL()+path, ociImageType, "")
			f.ResetCounts()
			if got := ask(t, http.MethodGet, base+path, ociImageType, ""); got != want || got.Status != http.StatusOK {
				t.Errorf("the manifest fetched again, OCI Accept:\n got  %+v\n want %+v (upstream)", got, want)
			}
			if n := f.Count("", "/manifests/"); n != 0 {
				t.Errorf("the manifest fetched again was not stored: %d upstream requests", n)
			}
		})
	}
}

const ociImageType = "application/vnd.oci.image.manifest.v1+json"

// removeStoredManifest deletes a manifest's revision link from the
// upstream's store, as an eviction or an operator would.
func removeStoredManifest(t *testing.T, p *ts.Proxy, repo, d string) {
	t.Helper()
	link := cache.RevisionLinkPath(p.Config.Upstreams[0].Storage.Path, repo, digest.Digest(d))
	if err := os.RemoveAll(filepath.Dir(link)); err != nil {
		t.Fatal(err)
	}
}

// removeStoredBlobData deletes the file of a manifest's bytes from the
// upstream's store, its revision link left in place, as a store half
// deleted or a blob file lost on a bad disk would.
func removeStoredBlobData(t *testing.T, p *ts.Proxy, _, d string) {
	t.Helper()
	data := storelayout.OnDisk(p.Config.Upstreams[0].Storage.Path, storelayout.BlobData(digest.Digest(d)))
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
}

// A valid manifest the upstream serves as text/plain, application/json or
// with no Content-Type is what its own mediaType says, as containerd and
// distribution's proxy read it: the cache serves it, stores it, and
// answers as the upstream answers when it sends the right type.
func TestManifestServedWithoutItsContentTypeIsReadByItsMediaType(t *testing.T) {
	up, f := faultyUpstream(t)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	base := p.URL("docker.io")
	all := strings.Join(upstream.ManifestAccept, ", ")
	for i, ct := range []string{"text/plain; charset=utf-8", "", "application/json", "application/octet-stream"} {
		kinds := []struct {
			kind string
			push func(repoTag string) string
		}{
			{"oci", func(rt string) string { return ts.Digest(t, ts.PushImage(t, up, rt, 1, 1024)) }},
			{"index", func(rt string) string { return ts.Digest(t, ts.PushIndex(t, up, rt)) }},
			{"docker", func(rt string) string { return ts.Digest(t, pushDockerImage(t, up, rt)) }},
			{"list", func(rt string) string { return ts.Digest(t, pushDockerList(t, up, rt, "amd64")) }},
		}
		for _, k := range kinds {
			repo := fmt.Sprintf("library/%s%d", k.kind, i)
			d := k.push(repo + ":1")
			path := "/v2/" + repo + "/manifests/"
			want := ask(t, http.MethodGet, up.URL()+path+d, all, "")
			what := fmt.Sprintf("%s served as Content-Type %q", k.kind, ct)

			remove := f.Add(ts.Rule{Method: "GET", PathContains: "/manifests/", Action: ts.ContentType(ct)})
			for _, ref := range []string{"1", d} {
				if got := ask(t, http.MethodGet, base+path+ref, all, ""); got != want {
					t.Errorf("%s, by %s:\n got  %+v\n want %+v (upstream, right type)", what, ref, got, want)
				}
			}
			remove()
			f.ResetCounts()
			if got := ask(t, http.MethodGet, base+path+d, all, ""); got != want {
				t.Errorf("%s, from the store:\n got  %+v\n want %+v", what, got, want)
			}
			if n := f.Count("", "/manifests/"); n != 0 {
				t.Errorf("%s: not stored, %d upstream manifest requests after", what, n)
			}
		}
	}
	if n := p.Metric(t, "multiproxy_upstream_bad_content_total", map[string]string{"upstream": "docker.io", "kind": "manifest"}); n != 0 {
		t.Errorf("multiproxy_upstream_bad_content_total = %v: a valid manifest counted as bad content", n)
	}
}
