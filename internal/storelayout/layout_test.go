package storelayout_test

import (
	"path"
	"testing"

	"github.com/distribution/distribution/v3/manifest/ocischema"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// The paths must be distribution's own: the cache writes beside it and
// garbage collection deletes what it finds there. They are spelled out in
// full here, as distribution's storage/paths.go documents them.
func TestPaths(t *testing.T) {
	d := digest.Digest("sha256:ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12")
	for _, c := range []struct{ name, got, want string }{
		{"blob data", storelayout.BlobData(d),
			"/docker/registry/v2/blobs/sha256/ab/ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12/data"},
		{"repository", storelayout.Repository("library/alpine"),
			"/docker/registry/v2/repositories/library/alpine"},
		{"manifests", storelayout.Manifests("team/tool"),
			"/docker/registry/v2/repositories/team/tool/_manifests"},
		{"revision link", storelayout.RevisionLink("library/alpine", d),
			"/docker/registry/v2/repositories/library/alpine/_manifests/revisions/sha256/ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12/link"},
		{"tag current", storelayout.TagCurrent("library/alpine", "3.20"),
			"/docker/registry/v2/repositories/library/alpine/_manifests/tags/3.20/current"},
		{"tag index entry", storelayout.TagIndexEntry("library/alpine", "latest", d),
			"/docker/registry/v2/repositories/library/alpine/_manifests/tags/latest/index/sha256/ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12"},
		{"repositories root", storelayout.RepositoriesRoot, "/docker/registry/v2/repositories"},
		{"on disk", storelayout.OnDisk("/var/lib/multiproxy/docker.io", storelayout.Manifests("a/b")),
			"/var/lib/multiproxy/docker.io/docker/registry/v2/repositories/a/b/_manifests"},
	} {
		if c.got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, c.got, c.want)
		}
	}
}

// The same paths hold what a real distribution store writes: a blob, a
// repository's manifest and its tag, in a registry the cache would open.
func TestDistributionWritesThere(t *testing.T) {
	ctx := t.Context()
	driver := inmemory.New()
	reg, err := storage.NewRegistry(ctx, driver)
	if err != nil {
		t.Fatal(err)
	}
	named, _ := reference.WithName("team/tool")
	repo, err := reg.Repository(ctx, named)
	if err != nil {
		t.Fatal(err)
	}
	blobs := repo.Blobs(ctx)
	config, err := blobs.Put(ctx, v1.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := blobs.Put(ctx, v1.MediaTypeImageLayerGzip, []byte("layer bytes"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ocischema.FromStruct(ocischema.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    config,
		Layers:    []v1.Descriptor{layer},
	})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ms.Put(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Tags(ctx).Tag(ctx, "v1", v1.Descriptor{Digest: d, MediaType: v1.MediaTypeImageManifest}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		storelayout.BlobData(layer.Digest),
		storelayout.BlobData(d),
		storelayout.Manifests("team/tool"),
		storelayout.RevisionLink("team/tool", d),
		storelayout.TagCurrent("team/tool", "v1"),
		storelayout.TagIndexEntry("team/tool", "v1", d),
		path.Join(storelayout.Repository("team/tool"), storelayout.LayersDir),
	} {
		if _, err := driver.Stat(ctx, p); err != nil {
			t.Errorf("distribution wrote nothing at %s: %v", p, err)
		}
	}
	walked := map[string]bool{}
	err = driver.Walk(ctx, storelayout.RepositoriesRoot, func(fi storagedriver.FileInfo) error {
		walked[fi.Path()] = true
		return nil
	})
	if err != nil || !walked[storelayout.Repository("team/tool")] {
		t.Errorf("the repository is not under %s: %v", storelayout.RepositoriesRoot, err)
	}
}
