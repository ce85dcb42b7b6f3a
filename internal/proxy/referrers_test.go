package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

const sigType = "application/vnd.example.signature.v1+json"

// pushSignature pushes an artifact whose subject is img, as cosign and
// Kyverno's signers do, under the cosign-style tag sha256-<hex>.sig.
// go-containerregistry also updates the referrers tag schema's index, since
// distribution has no referrers API.
func pushSignature(t *testing.T, up *ts.Upstream, repo string, img v1.Image) v1.Image {
	t.Helper()
	sig, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	sig = mutate.ConfigMediaType(sig, sigType)
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	size, err := img.Size()
	if err != nil {
		t.Fatal(err)
	}
	signed := mutate.Subject(sig, v1.Descriptor{MediaType: mt, Digest: d, Size: size}).(v1.Image)
	ref, err := name.NewTag(up.Registry.Ref(up.StoredRepo(repo)+":"+strings.Replace(d.String(), ":", "-", 1)+".sig"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, signed, up.Registry.RemoteOptions()...); err != nil {
		t.Fatalf("push signature: %v", err)
	}
	return signed
}

// Signatures of a cached image are listed and pulled through the cache, by
// the referrers API and by cosign's .sig tag, and still are with the
// upstream down: verification of a cached image does not depend on the
// internet.
func TestReferrersAndSignaturesThroughTheCache(t *testing.T) {
	for _, prof := range ts.Profiles()[:2] {
		t.Run(prof.Name, func(t *testing.T) {
			up := prof.Start(t)
			img := up.Push(t, "team/app:1", 1, 4096)
			sig := pushSignature(t, up, "team/app", img)
			p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))
			subject := ts.Digest(t, img)
			ref, err := name.NewDigest(p.Addr("docker.io")+"/team/app@"+subject, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}

			list := func() *v1.IndexManifest {
				t.Helper()
				idx, err := remote.Referrers(ref, ts.PullOptions()...)
				if err != nil {
					t.Fatalf("referrers through the cache: %v", err)
				}
				im, err := idx.IndexManifest()
				if err != nil {
					t.Fatal(err)
				}
				return im
			}
			im := list()
			if len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != ts.Digest(t, sig) || im.Manifests[0].ArtifactType != sigType {
				t.Fatalf("referrers of %s: %+v, want the signature %s", subject, im.Manifests, ts.Digest(t, sig))
			}
			filtered, err := remote.Referrers(ref, append(ts.PullOptions(), remote.WithFilter("artifactType", "application/other"))...)
			if err != nil {
				t.Fatal(err)
			}
			if fm, _ := filtered.IndexManifest(); len(fm.Manifests) != 0 {
				t.Errorf("artifactType filter kept %d referrers of another type", len(fm.Manifests))
			}
			// The signature itself, by digest and by its .sig tag.
			ts.VerifyImage(t, pullImage(t, p, "docker.io", "team/app@"+ts.Digest(t, sig)))
			sigTag := strings.Replace(subject, ":", "-", 1) + ".sig"
			if got := ts.Digest(t, pullImage(t, p, "docker.io", "team/app:"+sigTag)); got != ts.Digest(t, sig) {
				t.Fatalf(".sig tag through the cache: %s", got)
			}
			p.Settle(t)

			// The upstream fails: everything above is still served.
			up.Faults.Add(ts.Rule{PathContains: "/v2/", Action: ts.Status(http.StatusServiceUnavailable, nil)})
			if im := list(); len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != ts.Digest(t, sig) {
				t.Errorf("referrers with the upstream down: %+v", im.Manifests)
			}
			resp := get(t, p.URL("docker.io")+"/v2/team/app/referrers/"+subject, http.MethodGet)
			if !strings.Contains(resp.Header.Get("Warning"), "Stale") || resp.Header.Get("Content-Type") != string(types.OCIImageIndex) {
				t.Errorf("stale referrers: Warning %q, Content-Type %q", resp.Header.Get("Warning"), resp.Header.Get("Content-Type"))
			}
			ts.VerifyImage(t, pullImage(t, p, "docker.io", "team/app@"+ts.Digest(t, sig)))
			if got := ts.Digest(t, pullImage(t, p, "docker.io", "team/app:"+sigTag)); got != ts.Digest(t, sig) {
				t.Errorf(".sig tag with the upstream down: %s", got)
			}
		})
	}
}

// An upstream with a referrers API has its answer re-encoded: the same
// index, with nothing the spec does not define and no byte of the
// upstream's own formatting.
func TestReferrersAPIAnswerIsReencoded(t *testing.T) {
	up := ts.Profiles()[0].Start(t)
	img := up.Push(t, "team/app:1", 1, 1024)
	subject := ts.Digest(t, img)
	const sig = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	index := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + sig + `","size":321,"artifactType":"` + sigType + `","annotations":{"org.example":"x"}}]}`
	sent := "\n  " + strings.Replace(index, `"manifests"`, `"x-vendor":{"a":1}, "manifests"`, 1) + "\n"
	up.Faults.Add(ts.Rule{PathContains: "/referrers/", Action: ts.Body(http.StatusOK, string(types.OCIImageIndex), sent)})
	p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))

	resp := get(t, p.URL("docker.io")+"/v2/team/app/referrers/"+subject, http.MethodGet)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != string(types.OCIImageIndex) {
		t.Fatalf("referrers: %d %q %s %v", resp.StatusCode, resp.Header.Get("Content-Type"), body, err)
	}
	var got, want any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal([]byte(index), &want)
	if !reflect.DeepEqual(got, want) || strings.Contains(string(body), "x-vendor") || strings.HasPrefix(string(body), "\n") {
		t.Errorf("referrers answered\n%s\nwant the same index as\n%s", body, index)
	}
}

// A tag list names the repository the client asked for, whatever the
// upstream calls it: behind a redirected API (registry.k8s.io) that is
// another name, the upstream's business only.
func TestTagListNamesTheRepositoryAsAsked(t *testing.T) {
	ts.ForEachProfile(t, func(t *testing.T, up *ts.Upstream) {
		up.Push(t, "team/app:1", 1, 1024)
		up.Push(t, "team/app:2", 1, 1024)
		p := ts.StartProxy(t, up.ProxyUpstream("docker.io"))
		resp := get(t, p.URL("docker.io")+"/v2/team/app/tags/list", http.MethodGet)
		defer resp.Body.Close()
		var list struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("tag list: %d %v", resp.StatusCode, err)
		}
		if list.Name != "team/app" || !slices.Equal(list.Tags, []string{"1", "2"}) {
			t.Errorf("tag list %+v, want team/app's tags 1 and 2", list)
		}
	})
}
