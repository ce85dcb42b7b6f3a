package cache_test

import (
	"context"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/multiproxy/multiproxy/internal/cache"
)

// A pins file in the store is read back as written, and one that is not
// a pins file (too large, not JSON) is an error, never a partial list:
// the collector then stops instead of evicting what was pinned.
func TestReadPinsFromTheStore(t *testing.T) {
	ctx := context.Background()
	d := filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 100})

	if pins, err := cache.ReadPins(ctx, d); err != nil || pins != nil {
		t.Fatalf("no pins file: ReadPins = %v, %v; want none", pins, err)
	}
	if err := d.PutContent(ctx, cache.PinsPath, []byte(`{"pins":["library/nginx:1.25"]}`)); err != nil {
		t.Fatal(err)
	}
	if pins, err := cache.ReadPins(ctx, d); err != nil || len(pins) != 1 || pins[0] != "library/nginx:1.25" {
		t.Fatalf("ReadPins = %v, %v; want [library/nginx:1.25]", pins, err)
	}

	huge := `{"pins":["` + strings.Repeat("a", 2<<20) + `"]}`
	if err := d.PutContent(ctx, cache.PinsPath, []byte(huge)); err != nil {
		t.Fatal(err)
	}
	if pins, err := cache.ReadPins(ctx, d); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a 2 MiB pins file: ReadPins = %d pins, %v; want a size error", len(pins), err)
	}

	if err := d.PutContent(ctx, cache.PinsPath, []byte("<html>not json</html>")); err != nil {
		t.Fatal(err)
	}
	if _, err := cache.ReadPins(ctx, d); err == nil {
		t.Fatal("a pins file that is not JSON was read without an error")
	}
}
