package containers

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

func TestDockerPerPort(t *testing.T) {
	d, notes, err := Docker(table(), Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	want := DaemonJSON{
		RegistryMirrors:    []string{"http://10.0.20.10:5000"},
		InsecureRegistries: []string{"10.0.20.10:5000", "10.0.20.10:5010", "10.0.20.10:5020"},
	}
	if !slices.Equal(d.RegistryMirrors, want.RegistryMirrors) || !slices.Equal(d.InsecureRegistries, want.InsecureRegistries) {
		t.Errorf("got %+v, want %+v", d, want)
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "Docker Hub images only (moby#18818)") }) {
		t.Errorf("no note that registry-mirrors covers Docker Hub only: %q", notes)
	}
	var back map[string][]string
	if err := json.Unmarshal(d.JSON(), &back); err != nil || len(back) != 2 {
		t.Errorf("JSON() = %s (%v)", d.JSON(), err)
	}
}

// With TLS the mirror is https:// and no port is insecure; the notes say
// where the CA goes.
func TestDockerTLS(t *testing.T) {
	ups := table()
	ups[2].TLS = config.TLS{CertFile: "c.pem", KeyFile: "k.pem"}
	d, notes, err := Docker(ups, Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.InsecureRegistries, []string{"10.0.20.10:5000", "10.0.20.10:5010"}) {
		t.Errorf("insecure-registries %q: the TLS port must not be among them", d.InsecureRegistries)
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "/etc/docker/certs.d/10.0.20.10:5020/ca.crt") }) {
		t.Errorf("no CA note for the TLS port: %q", notes)
	}

	d, _, err = Docker(table(), Options{Address: "10.0.20.10", TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.RegistryMirrors, []string{"https://10.0.20.10:5000"}) || len(d.InsecureRegistries) != 0 {
		t.Errorf("all TLS: got %+v", d)
	}
	if strings.Contains(string(d.JSON()), "insecure-registries") {
		t.Errorf("an empty insecure-registries is written:\n%s", d.JSON())
	}
}

// dockerd's classic store names no registry in mirror requests, so the one
// port cannot serve as its mirror; a Docker Hub upstream with a port of its
// own can.
func TestDockerOnePort(t *testing.T) {
	ups := table()
	for i := range ups {
		ups[i].Listen = ""
	}
	opts := Options{Address: "10.0.20.10", Endpoint: "10.0.20.10:5000"}
	if _, _, err := Docker(ups, opts); !errors.Is(err, ErrOnePortHubMirror) {
		t.Errorf("one-port without a Docker Hub port: err %v", err)
	}
	ups[0].Listen = ":5001"
	d, _, err := Docker(ups, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(d.RegistryMirrors, []string{"http://10.0.20.10:5001"}) ||
		!slices.Equal(d.InsecureRegistries, []string{"10.0.20.10:5000", "10.0.20.10:5001"}) {
		t.Errorf("got %+v", d)
	}
}

func TestDockerNoHub(t *testing.T) {
	d, notes, err := Docker(table()[1:], Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.RegistryMirrors) != 0 || len(d.InsecureRegistries) != 2 || len(notes) == 0 {
		t.Errorf("got %+v, notes %q", d, notes)
	}
}

func TestMergeDaemonJSON(t *testing.T) {
	d := DaemonJSON{RegistryMirrors: []string{"http://10.0.20.10:5000"}, InsecureRegistries: []string{"10.0.20.10:5000", "10.0.20.10:5010"}}
	old := `{"log-driver": "journald", "insecure-registries": ["10.9.9.9:5000", "10.0.20.10:5010"],
	"registry-mirrors": ["http://10.0.20.10:5000/"], "features": {"containerd-snapshotter": true}}`
	merged, dropped, err := MergeDaemonJSON([]byte(old), d)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "log-driver": "journald",
  "insecure-registries": [
    "10.9.9.9:5000",
    "10.0.20.10:5010",
    "10.0.20.10:5000"
  ],
  "registry-mirrors": [
    "http://10.0.20.10:5000"
  ],
  "features": {
    "containerd-snapshotter": true
  }
}
`
	if string(merged) != want {
		t.Errorf("merged:\n%s\nwant:\n%s", merged, want)
	}
	if len(dropped) != 0 {
		t.Errorf("dropped %q: the same mirror with a trailing slash is not another one", dropped)
	}

	_, dropped, err = MergeDaemonJSON([]byte(`{"registry-mirrors": ["https://mirror.gcr.io"]}`), d)
	if err != nil || !slices.Equal(dropped, []string{"https://mirror.gcr.io"}) {
		t.Errorf("another mirror: dropped %q, %v", dropped, err)
	}
	for _, bad := range []string{`[]`, `{"registry-mirrors": "x"}`, `{} {}`, `{"a": }`} {
		if _, _, err := MergeDaemonJSON([]byte(bad), d); err == nil {
			t.Errorf("%s merged", bad)
		}
	}
	if merged, _, err := MergeDaemonJSON(nil, d); err != nil || string(merged) != string(d.JSON()) {
		t.Errorf("into nothing: %s, %v; want %s", merged, err, d.JSON())
	}
}

func TestWriteDaemonJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "docker", "daemon.json")
	d := DaemonJSON{RegistryMirrors: []string{"http://10.0.20.10:5000"}, InsecureRegistries: []string{"10.0.20.10:5000"}}
	now := func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	write := func(force bool) Result {
		t.Helper()
		res, _, err := WriteDaemonJSON(path, d, WriteOptions{Force: force, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if r := write(false); r.Action != nodefile.Created || r.Backup != "" {
		t.Errorf("first write: %+v", r)
	}
	if r := write(false); r.Action != nodefile.Unchanged {
		t.Errorf("second write: %+v", r)
	}
	other := `{"registry-mirrors": ["https://mirror.gcr.io"], "debug": true}`
	if err := errors.Join(os.WriteFile(path, []byte(other), 0o600), os.Chmod(path, 0o600)); err != nil {
		t.Fatal(err)
	}
	if r := write(false); r.Action != nodefile.Kept {
		t.Errorf("another mirror without force: %+v", r)
	}
	if b, _ := os.ReadFile(path); string(b) != other {
		t.Errorf("kept file changed: %s", b)
	}
	r := write(true)
	if r.Action != nodefile.Replaced || r.Backup != path+".bak" {
		t.Errorf("with force: %+v", r)
	}
	if b, _ := os.ReadFile(path + ".bak"); string(b) != other {
		t.Errorf("backup holds %s", b)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"debug": true`) || strings.Contains(string(b), "mirror.gcr.io") {
		t.Errorf("forced merge:\n%s", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the old file's 0600", st.Mode().Perm())
	}

	// A merge that only adds keys is an update, with a (now timestamped) backup.
	if err := os.WriteFile(path, []byte(`{"debug": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := write(false); r.Action != nodefile.Updated || r.Backup != path+".20260102T030405Z.bak" {
		t.Errorf("adding keys: %+v", r)
	}
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registries.conf.d", "50-multiproxy.conf")
	content, err := Generate(table(), Options{Address: "10.0.20.10"})
	if err != nil {
		t.Fatal(err)
	}
	write := func(c []byte, force bool) Result {
		t.Helper()
		r, err := WriteFile(path, c, WriteOptions{Force: force})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := write(content, false); r.Action != nodefile.Created {
		t.Errorf("first: %+v", r)
	}
	if r := write(content, false); r.Action != nodefile.Unchanged {
		t.Errorf("again: %+v", r)
	}
	next, _ := Generate(table(), Options{Address: "10.0.20.11"})
	if r := write(next, false); r.Action != nodefile.Updated {
		t.Errorf("a generated file regenerated: %+v", r)
	}
	edited := strings.Replace(string(next), "10.0.20.11:5000", "10.0.20.99:5000", 1)
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := write(content, false); r.Action != nodefile.Kept {
		t.Errorf("an edited file: %+v", r)
	}
	if b, _ := os.ReadFile(path); string(b) != edited {
		t.Error("the edited file was changed without force")
	}
	if r := write(content, true); r.Action != nodefile.Replaced || r.Backup != path+".bak" {
		t.Errorf("with force: %+v", r)
	}
	if b, _ := os.ReadFile(path + ".bak"); string(b) != edited {
		t.Error("the backup is not the edited file")
	}
	if b, _ := os.ReadFile(path); string(b) != string(content) {
		t.Error("force did not write the content")
	}
}
