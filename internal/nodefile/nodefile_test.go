package nodefile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/nodefile"
)

func TestMarkerTellsHandEditsApart(t *testing.T) {
	body := "server = \"https://ghcr.io\"\n"
	file := []byte(nodefile.MarkerLine(body) + body)
	if !nodefile.Unedited(file) {
		t.Fatalf("a freshly generated file reads as edited:\n%s", file)
	}
	edited := []byte(strings.Replace(string(file), "ghcr.io", "evil.example", 1))
	if nodefile.Unedited(edited) {
		t.Error("a file edited under its marker reads as unedited")
	}
	if nodefile.Unedited([]byte(body)) {
		t.Error("a file without a marker reads as generated")
	}
}

func TestBackupNeverOverwritesAndWriteIsWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts.toml")
	now := time.Date(2026, 12, 1, 1, 2, 3, 0, time.UTC)
	first, err := nodefile.Backup(path, []byte("one"), now, false)
	if err != nil || first != path+".bak" {
		t.Fatalf("first backup: %q, %v", first, err)
	}
	second, err := nodefile.Backup(path, []byte("two"), now, false)
	if err != nil || second != path+".20261201T010203Z.bak" {
		t.Fatalf("second backup: %q, %v", second, err)
	}
	if b, _ := os.ReadFile(first); string(b) != "one" {
		t.Errorf("the first backup was overwritten: %q", b)
	}
	if err := nodefile.WriteAtomic(path, []byte("content"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("written file: %v, %v", st.Mode(), err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".hosts.toml.*"))
	if len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}
