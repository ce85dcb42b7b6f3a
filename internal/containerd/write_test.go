package containerd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

func generate(t *testing.T, ups []config.Upstream, address string) []HostsFile {
	t.Helper()
	files, err := GenerateHosts(ups, HostsOptions{Address: address})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func write(t *testing.T, dir string, files []HostsFile, force bool) map[string]WriteResult {
	t.Helper()
	now := func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	res, err := WriteHosts(dir, files, WriteOptions{Force: force, Now: now})
	if err != nil {
		t.Fatalf("WriteHosts: %v", err)
	}
	m := map[string]WriteResult{}
	for _, r := range res {
		m[r.Registry] = r
	}
	return m
}

func TestWriteHostsLifecycle(t *testing.T) {
	dir := t.TempDir()
	// Another registry's directory, written by hand or by another tool:
	// never touched.
	other := filepath.Join(dir, "registry.internal", "hosts.toml")
	writeFile(t, other, "server = \"https://registry.internal\"\n")

	files := generate(t, testUpstreams, "10.0.20.10")
	if r := write(t, dir, files, false); r["docker.io"].Action != nodefile.Created || r["ghcr.io"].Action != nodefile.Created {
		t.Fatalf("first write: %+v", r)
	}
	path := filepath.Join(dir, "docker.io", "hosts.toml")
	if got := string(readFile(t, path)); got != string(files[0].Content) {
		t.Fatalf("written file differs from the generated one:\n%s", got)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}

	// Idempotent: same content, no rewrite (the mtime stays).
	if r := write(t, dir, files, false); r["docker.io"].Action != nodefile.Unchanged {
		t.Fatalf("second write: %+v", r["docker.io"])
	}
	if st, _ := os.Stat(path); !st.ModTime().Equal(old) {
		t.Error("an unchanged file was rewritten")
	}

	// The cache moved: our own unedited files are updated in place.
	moved := generate(t, testUpstreams, "10.0.20.11")
	if r := write(t, dir, moved, false); r["docker.io"].Action != nodefile.Updated || r["docker.io"].Backup != "" {
		t.Fatalf("write after the address changed: %+v", r["docker.io"])
	}
	if !strings.Contains(string(readFile(t, path)), "10.0.20.11:5000") {
		t.Error("the file was not updated")
	}
	if got := string(readFile(t, other)); got != "server = \"https://registry.internal\"\n" {
		t.Errorf("another registry's file changed: %q", got)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "docker.io"))
	if len(entries) != 1 {
		t.Errorf("docker.io/ holds %d entries, want hosts.toml alone (no temp files or backups)", len(entries))
	}
}

func TestWriteHostsKeepsHandEdits(t *testing.T) {
	for name, edit := range map[string]func(string) string{
		// A file someone wrote by hand, following the seeds.
		"no marker": func(string) string {
			return "server = \"https://registry-1.docker.io\"\n\n[host.\"http://10.0.20.10:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
		},
		// One of ours with a line added: the marker alone must not count.
		"edited after generation": func(s string) string { return s + "  skip_verify = true\n" },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			files := generate(t, testUpstreams[:1], "10.0.20.10")
			path := files[0].Path(dir)
			handEdited := edit(string(files[0].Content))
			writeFile(t, path, handEdited)

			regenerated := generate(t, testUpstreams[:1], "10.0.20.11")
			if r := write(t, dir, regenerated, false); r["docker.io"].Action != nodefile.Kept {
				t.Fatalf("without --force: %+v", r["docker.io"])
			}
			if got := string(readFile(t, path)); got != handEdited {
				t.Fatalf("hand-edited file was changed:\n%s", got)
			}

			r := write(t, dir, regenerated, true)
			if r["docker.io"].Action != nodefile.Replaced || r["docker.io"].Backup != path+".bak" {
				t.Fatalf("with --force: %+v", r["docker.io"])
			}
			if got := string(readFile(t, path+".bak")); got != handEdited {
				t.Errorf("backup holds %q, want the hand-edited file", got)
			}
			if got := string(readFile(t, path)); got != string(regenerated[0].Content) {
				t.Errorf("file after --force:\n%s", got)
			}

			// A second forced replacement does not overwrite the first backup.
			writeFile(t, path, handEdited+"# again\n")
			r = write(t, dir, regenerated, true)
			if want := path + ".20260102T030405Z.bak"; r["docker.io"].Backup != want {
				t.Errorf("second backup at %s, want %s", r["docker.io"].Backup, want)
			}
			if got := string(readFile(t, path+".bak")); got != handEdited {
				t.Error("the first backup was overwritten")
			}
		})
	}
}

func TestWriteHostsReportsShadowingDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "10.1.2.3_6000_", "hosts.toml"), "server = \"http://10.1.2.3:6000\"\n")
	ups := []config.Upstream{{Name: "10.1.2.3:6000", Listen: ":5030", Remote: "http://10.1.2.3:6000"}}
	r := write(t, dir, generate(t, ups, "10.0.20.10"), false)
	if want := filepath.Join(dir, "10.1.2.3_6000_"); r["10.1.2.3:6000"].Shadowed != want {
		t.Errorf("Shadowed = %q, want %q", r["10.1.2.3:6000"].Shadowed, want)
	}
}

func TestWriteConfigKeepsTimestampedBackup(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	writeFile(t, path, "version = 2\n")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	backup, err := WriteConfig(path, []byte("version = 2\n# new\n"), now)
	if err != nil {
		t.Fatal(err)
	}
	if want := path + ".20260102T030405Z.bak"; backup != want {
		t.Errorf("backup %s, want %s", backup, want)
	}
	if string(readFile(t, backup)) != "version = 2\n" || string(readFile(t, path)) != "version = 2\n# new\n" {
		t.Error("backup or new content wrong")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the old file's 0600", st.Mode().Perm())
	}
	if backup, err := WriteConfig(path, []byte("version = 2\n# new\n"), now); err != nil || backup != "" {
		t.Errorf("rewriting the same content: backup %q, err %v; want neither", backup, err)
	}
}
