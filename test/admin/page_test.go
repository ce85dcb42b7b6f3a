package admin

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// chromium runs Debian's headless chromium with args plus url and returns
// its stdout. Every network feature that could reach past loopback is off.
func chromium(t *testing.T, bin, url string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		// Containers often have a tiny /dev/shm, where chromium crashes.
		"--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,800",
	}
	cmd := exec.CommandContext(ctx, bin, append(append(base, args...), url)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A HOME of its own keeps chromium from writing into the real one.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\nstderr:\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// artifactPath is where the screenshot is kept after the test: under
// $TEST_ARTIFACTS_DIR when CI sets it, else in testdata/out (gitignored).
func artifactPath(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("TEST_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("testdata", "out")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artefact dir: %v", err)
	}
	abs, err := filepath.Abs(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func TestStatusPageRendersInChromium(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not found: install Debian's chromium package (apt-get install chromium; ci/install-chromium.sh does)")
	}
	hub := ts.StartRegistry(t, ts.RegistryOptions{})
	ghcr := ts.StartRegistry(t, ts.RegistryOptions{})
	quay := ts.NewRegistry(t, ts.RegistryOptions{}) // down throughout
	ts.PushImage(t, hub, "library/app:1", 2, 64<<10)
	p := ts.StartProxy(t,
		ts.ProxyUpstream{Name: "docker.io", Reg: hub},
		ts.ProxyUpstream{Name: "ghcr.io", Reg: ghcr},
		ts.ProxyUpstream{Name: "quay.io", Reg: quay})
	pull(t, p.URL("docker.io"), "library/app", "1")
	p.Settle(t) // the second pull is warm only once the first one's fills are stored
	pull(t, p.URL("docker.io"), "library/app", "1")
	ts.WaitUntil(t, 10*time.Second, "stored bytes measured and quay.io down", func() (bool, string) {
		st := status(t, p)
		us := upstreamStatus(t, st, "docker.io")
		return us.StoredBytes != nil && *us.StoredBytes > 128<<10 && upstreamStatus(t, st, "quay.io").State == "down",
			fmt.Sprintf("%+v", st)
	})

	dom := string(chromium(t, bin, p.AdminURL()+"/", "--dump-dom"))
	for _, u := range p.Config.Upstreams {
		row := rowOf(dom, u.Name)
		if row == "" {
			t.Errorf("the rendered page has no row for %s:\n%s", u.Name, dom)
			continue
		}
		_, port, _ := strings.Cut(p.Addr(u.Name), ":")
		for _, want := range []string{port, u.Remote} {
			if !strings.Contains(row, want) {
				t.Errorf("row of %s lacks %q: %s", u.Name, want, row)
			}
		}
	}
	for name, want := range map[string][]string{
		// Cold then warm: 1 tag and 3 blob hits; 1 tag, 1 manifest and
		// 3 blob misses.
		"docker.io": {"reachable", "44.4 %", "KiB", "none since start"},
		"ghcr.io":   {"reachable", "—"},
		"quay.io":   {"down"},
	} {
		for _, w := range want {
			if row := rowOf(dom, name); !strings.Contains(row, w) {
				t.Errorf("row of %s lacks %q: %s", name, w, row)
			}
		}
	}
	if !strings.Contains(dom, `http-equiv="refresh"`) {
		t.Error("the page does not refresh itself")
	}

	shot := artifactPath(t, "status.png")
	_ = os.Remove(shot)
	chromium(t, bin, p.AdminURL()+"/", "--screenshot="+shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 800 {
		t.Errorf("screenshot is %dx%d, want 1280x800", b.Dx(), b.Dy())
	}
	t.Logf("status page screenshot: %s", shot)
}

// rowOf is the HTML of the table row for an upstream, or "".
func rowOf(dom, name string) string {
	start := strings.Index(dom, `data-upstream="`+name+`"`)
	if start < 0 {
		return ""
	}
	end := strings.Index(dom[start:], "</tr>")
	if end < 0 {
		return dom[start:]
	}
	return dom[start : start+end]
}
