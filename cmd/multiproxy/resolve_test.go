package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

const manifests = `# Rendered by helm template; pinned by multiproxy resolve -w.
---
# Source: shop/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop   # the web shop
spec:
  template:
    spec:
      initContainers:
         - name: migrate
           image: "docker.io/team/api:2"    # same image, other job
      containers:
      - name: web
        image: app:1.0
        ports: [{containerPort: 8080}]
      - {name: api, image: 'docker.io/team/api:2', args: [--port, "9000"]}
---
# Source: shop/templates/job.yaml
apiVersion: batch/v1
kind: Job
metadata: {name: seed}
spec:
  template:
    spec:
      containers: [{name: seed, image: docker.io/library/app:1.0}]
`

const terraform = `# Terraform
resource "docker_container" "web" {
	name  = "web"
	image = "app:1.0"   # pinned by CI
}

resource "kubernetes_pod" "api" {
  spec {
    container {
      image = "docker.io/team/api:2"
      command = ["sh", "-c", <<-EOT
        echo image = "app:1.0"
      EOT
      ]
    }
  }
}
`

// The test: -w pins a multi-document YAML with comments and an HCL
// file changing only the image strings, byte for byte; --check is quiet
// while the pins are current, and lists a tag moved upstream (with both
// digests) and an unpinned reference, exiting 1.
func TestResolveWriteAndCheckFiles(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	app := ts.Digest(t, ts.PushImage(t, up, "library/app:1.0", 1, 1024))
	api := ts.Digest(t, ts.PushImage(t, up, "team/api:2", 1, 1024))
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	dir := t.TempDir()
	yml := writeFile(t, dir, "shop.yaml", manifests)
	tf := writeFile(t, dir, "main.tf", terraform)
	if err := os.Chmod(tf, 0o644); err != nil {
		t.Fatal(err)
	}

	out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "-w", yml, tf)
	if code != 0 {
		t.Fatalf("resolve -w: exit %d: %s%s", code, out, stderr)
	}
	wantYAML := replaceOnce(t, manifests,
		`"docker.io/team/api:2"`, `"docker.io/team/api:2@`+api+`"`,
		"image: app:1.0\n", "image: app:1.0@"+app+"\n",
		`'docker.io/team/api:2'`, `'docker.io/team/api:2@`+api+`'`,
		"image: docker.io/library/app:1.0}", "image: docker.io/library/app:1.0@"+app+"}")
	wantTF := replaceOnce(t, terraform,
		`"app:1.0"   #`, `"app:1.0@`+app+`"   #`,
		`"docker.io/team/api:2"`, `"docker.io/team/api:2@`+api+`"`)
	sameFile(t, yml, wantYAML)
	sameFile(t, tf, wantTF)
	if st, err := os.Stat(tf); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("main.tf mode after -w: %v, %v; want 0644 kept", st.Mode().Perm(), err)
	}
	for _, line := range []string{
		yml + ":13: docker.io/team/api:2 -> docker.io/team/api:2@" + api,
		yml + ":16: app:1.0 -> app:1.0@" + app,
		tf + ":4: app:1.0 -> app:1.0@" + app,
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("resolve -w output lacks %q:\n%s", line, out)
		}
	}

	// Pinned and current: --check is quiet, and -w changes nothing.
	if out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "--check", yml, tf); code != 0 {
		t.Fatalf("--check right after -w: exit %d: %s%s", code, out, stderr)
	}
	if out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "-w", yml, tf); code != 0 || strings.Contains(out, "->") {
		t.Fatalf("second -w: exit %d, changed something: %s%s", code, out, stderr)
	}
	sameFile(t, yml, wantYAML)

	// The tag moves upstream, and someone adds an unpinned reference.
	moved := ts.Digest(t, ts.PushImage(t, up, "library/app:1.0", 1, 1024))
	compose := writeFile(t, dir, "compose.yaml", "services:\n  api:\n    image: team/api:2 # unpinned\n")
	out, stderr, code = run(t, "resolve", "--admin", p.AdminURL(), "--check", yml, tf, compose)
	if code != 1 {
		t.Fatalf("--check after the tag moved: exit %d, want 1: %s%s", code, out, stderr)
	}
	for _, line := range []string{
		yml + ":16: app:1.0: drift: pinned " + app + ", the tag is now " + moved,
		yml + ":27: docker.io/library/app:1.0: drift: pinned " + app + ", the tag is now " + moved,
		tf + ":4: app:1.0: drift: pinned " + app + ", the tag is now " + moved,
		compose + ":3: team/api:2: no digest (the tag is " + api + ")",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("--check output lacks %q:\n%s", line, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 4 {
		t.Errorf("--check printed %d lines, want one per finding (4):\n%s", n, out)
	}
	if !strings.Contains(stderr, "4 unpinned or stale") {
		t.Errorf("--check error %q does not count the findings", stderr)
	}
	sameFile(t, yml, wantYAML) // --check only reads

	// What CI sees: the real binary's exit status.
	bin := exec.Command(buildBinary(t), "resolve", "--admin", p.AdminURL(), "--check", yml)
	binOut, err := bin.Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(binOut), ": drift: ") {
		t.Errorf("the binary's --check: %v, want exit status 1 listing the drift:\n%s", err, binOut)
	}

	// -w fixes the drift: the digests move, nothing else.
	if out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "-w", yml, tf, compose); code != 0 {
		t.Fatalf("-w after drift: exit %d: %s%s", code, out, stderr)
	}
	sameFile(t, yml, strings.ReplaceAll(wantYAML, app, moved))
	sameFile(t, tf, strings.ReplaceAll(wantTF, app, moved))
	sameFile(t, compose, "services:\n  api:\n    image: team/api:2@"+api+" # unpinned\n")
	if out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "--check", yml, tf, compose); code != 0 {
		t.Fatalf("--check after the fix: exit %d: %s%s", code, out, stderr)
	}
}

// A registry no upstream serves: reported with its place, left unchanged
// while the rest of the file is pinned, exit 1.
func TestResolveWriteUnservedRegistry(t *testing.T) {
	up := ts.StartRegistry(t, ts.RegistryOptions{})
	app := ts.Digest(t, ts.PushImage(t, up, "library/app:1.0", 1, 1024))
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	src := "services:\n  a: {image: ghcr.io/acme/tool:3}\n  b: {image: app:1.0}\n"
	f := writeFile(t, t.TempDir(), "compose.yml", src)

	out, stderr, code := run(t, "resolve", "--admin", p.AdminURL(), "-w", f)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s%s", code, out, stderr)
	}
	if !strings.Contains(out, f+":2: ghcr.io/acme/tool:3: cannot resolve") || !strings.Contains(out, "ghcr.io") {
		t.Errorf("the unserved reference is not reported with its place:\n%s", out)
	}
	sameFile(t, f, strings.Replace(src, "app:1.0}", "app:1.0@"+app+"}", 1))
	if _, _, code := run(t, "resolve", "--admin", p.AdminURL(), "--check", f); code != 1 {
		t.Errorf("--check with an unserved reference: exit %d, want 1", code)
	}
}

func TestResolveUsage(t *testing.T) {
	for _, args := range [][]string{
		{"resolve", "-w", "--check", "x.yaml"},
		{"resolve", "-w"},
		{"resolve", "a:1", "b:2"},
	} {
		if _, stderr, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
}

// A file that is missing or does not parse is named, and the others are
// still checked.
func TestResolveCheckBadFiles(t *testing.T) {
	dir := t.TempDir()
	broken := writeFile(t, dir, "broken.yaml", "services: [a\n")
	missing := filepath.Join(dir, "missing.tf")
	digestOnly := writeFile(t, dir, "ok.yaml", "services: {a: {image: 'app@sha256:"+strings.Repeat("0", 64)+"'}}\n")
	out, stderr, code := run(t, "resolve", "--admin", "http://127.0.0.1:1", "--check", broken, missing, digestOnly)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s%s", code, out, stderr)
	}
	for _, want := range []string{broken + ": YAML document 1", missing, "of 1 image references: 2 files could not be read, parsed or written"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func replaceOnce(t *testing.T, s string, repl ...string) string {
	t.Helper()
	for i := 0; i < len(repl); i += 2 {
		if n := strings.Count(s, repl[i]); n != 1 {
			t.Fatalf("%q occurs %d times", repl[i], n)
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	return s
}

func sameFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != want {
		t.Errorf("%s:\n%s\nwant exactly:\n%s", filepath.Base(path), b, want)
	}
}
