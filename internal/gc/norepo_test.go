package gc_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/gc"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// Versions before wrote a repository for every name a blob was read under:
// a _layers link, with no manifest. A collection removes those, down to
// their directories, and leaves the repositories that hold manifests, their
// links and what they reference as they were.
func TestCollectRemovesRepositoriesWithoutManifests(t *testing.T) {
	f := newFixture(t)
	img := f.up.Push(t, "team/app:1", 2, 16<<10)
	layers := ts.LayerDigests(t, img)
	c := &http.Client{Timeout: 30 * time.Second}
	if err := ts.PullVerified(c, f.base, "team/app", "1"); err != nil {
		t.Fatal(err)
	}
	f.settle(t)
	reposDir := filepath.Join(f.cfg.Storage.Path, "docker/registry/v2/repositories")
	link := func(repo, d string) string {
		return filepath.Join(reposDir, repo, "_layers/sha256", strings.TrimPrefix(d, "sha256:"), "link")
	}
	for _, d := range layers {
		if _, err := os.Stat(link("team/app", d)); err != nil {
			t.Fatalf("the pull did not link %s: %v", d, err)
		}
	}
	before := ts.DirsUnder(t, reposDir)

	// What an older version left: links under names with no manifest,
	// nested ones, one inside a repository that holds a manifest, and an
	// upload directory.
	leftovers := []string{"rnd/a1", "rnd/b2/c3", "x9", "team/app/sub"}
	for _, repo := range leftovers {
		for _, d := range layers {
			writeFile(t, link(repo, d), d)
		}
	}
	writeFile(t, filepath.Join(reposDir, "x9/_uploads/0b1c/startedat"), time.Now().Format(time.RFC3339))
	catalog := readCatalog(t, f.base)
	if catalog != `{"repositories":["team/app"]}` {
		t.Fatalf("_catalog before the collection: %s", catalog)
	}

	res, err := gc.Collect(context.Background(), f.store, gc.Policy{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.FreedBlobs != 0 || len(res.Evicted) != 0 {
		t.Errorf("collection freed %d blobs and evicted %v, want nothing: every blob is referenced", res.FreedBlobs, res.Evicted)
	}
	if after := ts.DirsUnder(t, reposDir); !slices.Equal(after, before) {
		t.Errorf("directories under repositories/ after the collection:\n%v\nwant as before the leftovers:\n%v", after, before)
	}
	for _, d := range layers {
		if _, err := os.Stat(link("team/app", d)); err != nil {
			t.Errorf("the collection removed team/app's link to %s: %v", d, err)
		}
	}
	if got := readCatalog(t, f.base); got != catalog {
		t.Errorf("_catalog after the collection: %s, want %s", got, catalog)
	}
	if err := ts.PullVerified(c, f.base, "team/app", "1"); err != nil {
		t.Errorf("pull after the collection: %v", err)
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readCatalog(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("_catalog: %d %v", resp.StatusCode, err)
	}
	return strings.TrimSpace(string(b))
}
