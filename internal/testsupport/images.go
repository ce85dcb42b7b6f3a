package testsupport

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// indexChildLayerSize keeps PushIndex cheap; tests that care about blob
// sizes use PushImage.
const indexChildLayerSize = 1024

// PushImage builds an OCI image with the given number of layers, each a
// gzip-compressed tar holding one file of layerSize random bytes, and
// pushes it to r as repoTag ("repo:tag"). Content is random, so every call
// yields distinct digests.
func PushImage(t testing.TB, r *Registry, repoTag string, layers int, layerSize int64) v1.Image {
	t.Helper()
	img, err := newImage(layers, layerSize, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatalf("testsupport: build image: %v", err)
	}
	ref := parseRef(t, r, repoTag)
	if err := remote.Write(ref, img, r.RemoteOptions()...); err != nil {
		t.Fatalf("testsupport: push %s: %v", ref, err)
	}
	return img
}

// PushIndex pushes a multi-arch OCI index to r as repoTag, with one small
// single-layer image each for linux/amd64 and linux/arm64. The platform is
// recorded both in the index descriptors and in each image's config, since
// clients select by the former and verify against the latter.
func PushIndex(t testing.TB, r *Registry, repoTag string) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range []string{"amd64", "arm64"} {
		p := v1.Platform{OS: "linux", Architecture: arch}
		img, err := newImage(1, indexChildLayerSize, p)
		if err != nil {
			t.Fatalf("testsupport: build %s image: %v", arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	ref := parseRef(t, r, repoTag)
	// WriteIndex uploads the children first, which the registry requires:
	// it rejects an index whose manifests it does not have.
	if err := remote.WriteIndex(ref, idx, r.RemoteOptions()...); err != nil {
		t.Fatalf("testsupport: push index %s: %v", ref, err)
	}
	return idx
}

// Digest returns x's digest as "sha256:...".
func Digest(t testing.TB, x interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := x.Digest()
	if err != nil {
		t.Fatalf("testsupport: digest: %v", err)
	}
	return h.String()
}

// LayerDigests returns the compressed (blob) digests of img's layers in
// manifest order.
func LayerDigests(t testing.TB, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatalf("testsupport: layers: %v", err)
	}
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, Digest(t, l))
	}
	return out
}

func parseRef(t testing.TB, r *Registry, repoTag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(repoTag), name.StrictValidation)
	if err != nil {
		t.Fatalf("testsupport: parse reference %q: %v", repoTag, err)
	}
	return ref
}

func newImage(layers int, layerSize int64, p v1.Platform) (v1.Image, error) {
	// The config's creation time is fixed (testinfra.ImageCreated) so that
	// only the random content distinguishes images; a nonce label keeps
	// even layerless images unique.
	ls := make([]v1.Layer, 0, layers)
	for range layers {
		l, err := random.Layer(layerSize, types.OCILayer)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return testinfra.OCIImage(ls, "testsupport", func(cf *v1.ConfigFile) {
		cf.OS = p.OS
		cf.Architecture = p.Architecture
		cf.Variant = p.Variant
		cf.Config.Cmd = []string{"/bin/sh"}
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		cf.Config.Labels = map[string]string{"org.multiproxy.testsupport.nonce": testinfra.RandomHex(8)}
	})
}
