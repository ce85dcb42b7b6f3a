package testsupport

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// Media types the corpus uses beyond go-containerregistry's.
const (
	mtEmptyJSON        = "application/vnd.oci.empty.v1+json"
	mtArtifactData     = "application/vnd.example.data.v1.tar"
	mtArtifact         = "application/vnd.example.artifact.v1"
	mtSignature        = "application/vnd.example.signature.v1"
	mtSBOM             = "application/vnd.example.sbom.v1"
	mtNondistributable = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)

// Corpus is what PushCorpus stored in one repository: every kind of
// content the OCI conformance suite pushes, so that a test can ask a
// registry (or the cache in front of it) about each.
type Corpus struct {
	// Repo is the repository as clients of the upstream name it.
	Repo      string
	Manifests []CorpusManifest
	Blobs     []CorpusBlob
	// Subjects are manifests that others refer to with their subject
	// field; their referrers are listed in a tag-schema index
	// ("sha256-<hex>"), as clients push them to a registry without the
	// referrers API.
	Subjects []string
	// Foreign are layers a manifest names by URL that were never pushed
	// (non-distributable layers).
	Foreign []string
}

// CorpusManifest is one manifest of a Corpus.
type CorpusManifest struct {
	// Name says what it is ("nested index").
	Name string
	// Tag is "" for a manifest reachable only by digest.
	Tag       string
	Digest    string
	MediaType string
	Size      int64
}

// CorpusBlob is one blob of a Corpus.
type CorpusBlob struct {
	Name   string
	Digest string
	Size   int64
}

// Tags are the corpus's tags, sorted as a tag list is.
func (c *Corpus) Tags() []string {
	var out []string
	for _, m := range c.Manifests {
		if m.Tag != "" {
			out = append(out, m.Tag)
		}
	}
	slices.Sort(out)
	return out
}

// ManifestDigests lists every manifest digest once.
func (c *Corpus) ManifestDigests() []string {
	var out []string
	for _, m := range c.Manifests {
		if !slices.Contains(out, m.Digest) {
			out = append(out, m.Digest)
		}
	}
	return out
}

// BlobDigests lists every blob digest once.
func (c *Corpus) BlobDigests() []string {
	var out []string
	for _, b := range c.Blobs {
		if !slices.Contains(out, b.Digest) {
			out = append(out, b.Digest)
		}
	}
	return out
}

// PushCorpus is PushCorpus to where clients of the upstream find repo.
func (up *Upstream) PushCorpus(t testing.TB, repo string) *Corpus {
	t.Helper()
	c := PushCorpus(t, up.Registry, up.StoredRepo(repo))
	c.Repo = repo
	return c
}

// PushCorpus pushes to repo on r, manifest by manifest and blob by blob as
// raw bytes, the data the OCI distribution-spec conformance suite pushes:
// an image, an uncompressed-layer image, a Docker image and manifest list,
// an index, a nested index, artifacts (with and without layers), manifests
// with a subject and their tag-schema referrers index, an index with a
// subject, descriptors with the data field, custom fields, an image with no
// layers, the empty blob, a sha512 blob, a manifest of nearly 4 MiB (the
// most distribution accepts) and non-distributable layers.
//
// Raw bytes rather than go-containerregistry's image builders, because
// several of these (custom fields, data, artifactType on an index, foreign
// layers) are exactly what builders normalise away. Content is random, so
// digests differ per call; the shape is always the same.
func PushCorpus(t testing.TB, r *Registry, repo string) *Corpus {
	t.Helper()
	p := &corpusPusher{t: t, r: r, c: &Corpus{Repo: repo}}
	p.repo = parseRepo(t, r, repo)

	platform := func(arch string) *v1.Platform { return &v1.Platform{OS: "linux", Architecture: arch} }

	image := p.image("image", "image", types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer, "amd64", []int64{64 << 10, 1 << 10})
	p.image("image with an uncompressed layer", "image-uncompressed", types.OCIManifestSchema1, types.OCIConfigJSON, types.OCIUncompressedLayer, "amd64", []int64{4 << 10})
	docker := p.image("Docker image", "docker-image", types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerLayer, "amd64", []int64{8 << 10})
	dockerArm := p.image("Docker image, arm64", "", types.DockerManifestSchema2, types.DockerConfigJSON, types.DockerLayer, "arm64", []int64{1 << 10})
	p.manifest("Docker manifest list", "docker-list", types.DockerManifestList, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.DockerManifestList,
		"manifests":     []v1.Descriptor{withPlatform(docker, platform("amd64")), withPlatform(dockerArm, platform("arm64"))},
	})

	amd := p.image("index child, amd64", "", types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer, "amd64", []int64{1 << 10})
	arm := p.image("index child, arm64", "", types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer, "arm64", []int64{1 << 10})
	index := p.manifest("index", "index", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"manifests":     []v1.Descriptor{withPlatform(amd, platform("amd64")), withPlatform(arm, platform("arm64"))},
	})
	riscv := p.image("inner index child, riscv64", "", types.OCIManifestSchema1, types.OCIConfigJSON, types.OCILayer, "riscv64", []int64{1 << 10})
	inner := p.manifest("inner index", "", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"manifests":     []v1.Descriptor{withPlatform(riscv, platform("riscv64"))},
	})
	p.manifest("nested index", "index-of-index", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"manifests":     []v1.Descriptor{index, inner},
	})
	p.manifest("empty index", "empty-index", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"manifests":     []v1.Descriptor{},
	})

	empty := p.blob("empty JSON config", []byte("{}"), mtEmptyJSON)
	p.manifest("artifact", "artifact", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtArtifact,
		"config":        empty,
		"layers":        []v1.Descriptor{p.blob("artifact layer", corpusBytes(2<<10), mtArtifactData)},
	})
	p.manifest("artifact without layers", "artifact-without-layers", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtArtifact,
		"config":        empty,
		"layers":        []v1.Descriptor{empty},
	})
	p.manifest("artifact index", "artifact-index", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"artifactType":  mtArtifact,
		"manifests":     []v1.Descriptor{amd, arm},
	})

	// Referrers of the image and of the index. Distribution has no
	// referrers API, so the tag schema is what clients such as oras and
	// cosign push there, and what a registry without the API offers.
	signature := p.manifest("signature of the image (subject)", "tagged-artifact", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtSignature,
		"config":        empty,
		"layers":        []v1.Descriptor{p.blob("signature", corpusBytes(512), mtArtifactData)},
		"subject":       image,
		"annotations":   map[string]string{"org.opencontainers.conformance": "hello conformance test"},
	})
	sbom := p.manifest("SBOM of the image (subject, untagged)", "", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtSBOM,
		"config":        empty,
		"layers":        []v1.Descriptor{p.blob("SBOM", corpusBytes(1<<10), mtArtifactData)},
		"subject":       image,
	})
	p.referrers(image, signature, sbom)
	indexSig := p.manifest("index with a subject", "index-with-subject", types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"artifactType":  mtSignature,
		"manifests":     []v1.Descriptor{amd},
		"subject":       index,
	})
	p.referrers(index, indexSig)

	cfg := p.config("data field image", types.OCIConfigJSON, "amd64", nil)
	layer := p.blob("data field layer", corpusBytes(256), types.OCIUncompressedLayer)
	cfg.Data, layer.Data = p.bytes[cfg.Digest.String()], p.bytes[layer.Digest.String()]
	p.manifest("descriptors with the data field", "data-field", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"config":        cfg,
		"layers":        []v1.Descriptor{layer},
	})

	cfg = p.config("custom fields image", types.OCIConfigJSON, "amd64", map[string]any{"org.example.custom": map[string]any{"answer": 42}})
	p.manifest("custom fields", "custom-fields", types.OCIManifestSchema1, map[string]any{
		"schemaVersion":      2,
		"mediaType":          types.OCIManifestSchema1,
		"config":             cfg,
		"layers":             []v1.Descriptor{p.blob("custom fields layer", corpusBytes(256), types.OCIUncompressedLayer)},
		"org.example.custom": map[string]any{"list": []int{1, 2, 3}, "text": "kept as pushed"},
	})

	p.manifest("image with no layers", "no-layers", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"config":        p.config("no layers image", types.OCIConfigJSON, "amd64", nil),
		"layers":        []v1.Descriptor{},
	})
	p.manifest("artifact holding the empty blob", "empty-blob", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtArtifact,
		"config":        empty,
		"layers":        []v1.Descriptor{p.blob("empty blob", nil, mtArtifactData)},
	})
	// Distribution takes blobs by sha512, but computes a manifest's digest
	// with sha256 whatever the PUT says, so only the layer is sha512.
	p.manifest("artifact with a sha512 layer", "sha512", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"artifactType":  mtArtifact,
		"config":        empty,
		"layers":        []v1.Descriptor{p.sha512Blob("sha512 blob", corpusBytes(1<<10), mtArtifactData)},
	})

	// 390 annotations of 10000 bytes, as the conformance suite's large
	// manifest: just under distribution's 4 MiB limit on a manifest PUT,
	// which the cache applies to a manifest GET too.
	large := map[string]string{}
	for i := range 390 {
		large[fmt.Sprintf("large-annotation-%d", i)] = strings.Repeat("A", 10000)
	}
	p.manifest("large manifest", "large-manifest", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"config":        p.config("large manifest image", types.OCIConfigJSON, "amd64", nil),
		"layers":        []v1.Descriptor{p.blob("large manifest layer", corpusBytes(256), types.OCIUncompressedLayer)},
		"annotations":   large,
	})

	// Non-distributable layers are named by URL and never pushed; the
	// registry stores the manifest without them.
	foreign := make([]v1.Descriptor, 2)
	for i := range foreign {
		d := v1.Hash{Algorithm: "sha256", Hex: testinfra.RandomHex(32)}
		foreign[i] = v1.Descriptor{
			MediaType: mtNondistributable,
			Digest:    d,
			Size:      123456,
			URLs:      []string{"https://store.example.com/blobs/sha256/" + d.Hex},
		}
		p.c.Foreign = append(p.c.Foreign, d.String())
	}
	p.manifest("image with non-distributable layers", "non-distributable", types.OCIManifestSchema1, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIManifestSchema1,
		"config":        p.config("non-distributable image", types.OCIConfigJSON, "amd64", nil),
		"layers":        append(foreign, p.blob("distributable layer", corpusBytes(512), types.OCIUncompressedLayer)),
	})
	return p.c
}

type corpusPusher struct {
	t     testing.TB
	r     *Registry
	repo  name.Repository
	c     *Corpus
	bytes map[string][]byte
}

// blob pushes b and returns its descriptor.
func (p *corpusPusher) blob(what string, b []byte, mt types.MediaType) v1.Descriptor {
	p.t.Helper()
	return p.upload(what, static.NewLayer(b, mt), b)
}

// sha512Blob pushes b under its sha512 digest.
func (p *corpusPusher) sha512Blob(what string, b []byte, mt types.MediaType) v1.Descriptor {
	p.t.Helper()
	return p.upload(what, &sha512Layer{b: b, mt: mt}, b)
}

func (p *corpusPusher) upload(what string, l v1.Layer, b []byte) v1.Descriptor {
	p.t.Helper()
	if err := remote.WriteLayer(p.repo, l, p.r.RemoteOptions()...); err != nil {
		p.t.Fatalf("testsupport: push %s blob: %v", what, err)
	}
	d, err := l.Digest()
	if err != nil {
		p.t.Fatal(err)
	}
	mt, _ := l.MediaType()
	if p.bytes == nil {
		p.bytes = map[string][]byte{}
	}
	p.bytes[d.String()] = b
	if !slices.ContainsFunc(p.c.Blobs, func(x CorpusBlob) bool { return x.Digest == d.String() }) {
		p.c.Blobs = append(p.c.Blobs, CorpusBlob{Name: what, Digest: d.String(), Size: int64(len(b))})
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}
}

// layer pushes a gzip-compressed (or plain) tar layer of size random bytes.
func (p *corpusPusher) layer(what string, size int64, mt types.MediaType) (v1.Descriptor, v1.Hash) {
	p.t.Helper()
	l, err := random.Layer(size, mt)
	if err != nil {
		p.t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		p.t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		p.t.Fatal(err)
	}
	diffID, err := l.DiffID()
	if err != nil {
		p.t.Fatal(err)
	}
	return p.blob(what, b, mt), diffID
}

// config pushes an image config for arch whose rootfs lists diffIDs, with
// extra top-level fields.
func (p *corpusPusher) config(what string, mt types.MediaType, arch string, extra map[string]any, diffIDs ...v1.Hash) v1.Descriptor {
	p.t.Helper()
	if diffIDs == nil {
		diffIDs = []v1.Hash{}
	}
	cfg := map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      "2024-01-01T00:00:00Z",
		"config":       map[string]any{"Cmd": []string{"/bin/sh"}, "Labels": map[string]string{"org.multiproxy.testsupport.nonce": testinfra.RandomHex(8)}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	return p.blob(what+" config", mustJSON(p.t, cfg), mt)
}

// image pushes the layers and config of an image, then its manifest.
func (p *corpusPusher) image(what, tag string, mt, configMT, layerMT types.MediaType, arch string, sizes []int64) v1.Descriptor {
	p.t.Helper()
	layers := make([]v1.Descriptor, 0, len(sizes))
	diffIDs := make([]v1.Hash, 0, len(sizes))
	for i, size := range sizes {
		l, diffID := p.layer(fmt.Sprintf("%s layer %d", what, i+1), size, layerMT)
		layers = append(layers, l)
		diffIDs = append(diffIDs, diffID)
	}
	return p.manifest(what, tag, mt, map[string]any{
		"schemaVersion": 2,
		"mediaType":     mt,
		"config":        p.config(what, configMT, arch, nil, diffIDs...),
		"layers":        layers,
	})
}

// manifest pushes fields as a manifest of type mt, by tag or, without
// one, by digest.
func (p *corpusPusher) manifest(what, tag string, mt types.MediaType, fields map[string]any) v1.Descriptor {
	p.t.Helper()
	body := mustJSON(p.t, fields)
	h, size, err := v1.SHA256(bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	var ref name.Reference = p.repo.Digest(h.String())
	if tag != "" {
		ref = p.repo.Tag(tag)
	}
	if err := remote.Put(ref, rawManifest{body: body, mt: mt}, p.r.RemoteOptions()...); err != nil {
		p.t.Fatalf("testsupport: push %s manifest: %v", what, err)
	}
	p.c.Manifests = append(p.c.Manifests, CorpusManifest{Name: what, Tag: tag, Digest: h.String(), MediaType: string(mt), Size: size})
	d := v1.Descriptor{MediaType: mt, Digest: h, Size: size}
	if at, ok := fields["artifactType"].(string); ok {
		d.ArtifactType = at
	}
	if a, ok := fields["annotations"].(map[string]string); ok && len(a) < 10 {
		d.Annotations = a
	}
	return d
}

// referrers pushes the tag-schema index listing refs as referrers of
// subject.
func (p *corpusPusher) referrers(subject v1.Descriptor, refs ...v1.Descriptor) {
	p.t.Helper()
	tag := subject.Digest.Algorithm + "-" + subject.Digest.Hex
	p.manifest("referrers of "+subject.Digest.String()+" (tag schema)", tag, types.OCIImageIndex, map[string]any{
		"schemaVersion": 2,
		"mediaType":     types.OCIImageIndex,
		"manifests":     refs,
	})
	p.c.Subjects = append(p.c.Subjects, subject.Digest.String())
}

func withPlatform(d v1.Descriptor, p *v1.Platform) v1.Descriptor {
	d.Platform = p
	return d
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func corpusBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func parseRepo(t testing.TB, r *Registry, repo string) name.Repository {
	t.Helper()
	rp, err := name.NewRepository(r.Ref(repo), name.StrictValidation)
	if err != nil {
		t.Fatalf("testsupport: parse repository %q: %v", repo, err)
	}
	return rp
}

// rawManifest is a manifest go-containerregistry PUTs byte for byte.
type rawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// sha512Layer is a blob go-containerregistry uploads under its sha512
// digest; its own layers are always sha256.
type sha512Layer struct {
	b  []byte
	mt types.MediaType
}

func (l *sha512Layer) Digest() (v1.Hash, error) {
	sum := sha512.Sum512(l.b)
	return v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(sum[:])}, nil
}
func (l *sha512Layer) DiffID() (v1.Hash, error) { return l.Digest() }
func (l *sha512Layer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.b)), nil
}
func (l *sha512Layer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }
func (l *sha512Layer) Size() (int64, error)                 { return int64(len(l.b)), nil }
func (l *sha512Layer) MediaType() (types.MediaType, error)  { return l.mt, nil }
