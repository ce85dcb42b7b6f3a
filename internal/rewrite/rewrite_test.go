package rewrite

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// digestOf stands in for what a registry answers: a distinct digest per tag.
func digestOf(tag string) string {
	sum := sha256.Sum256([]byte(tag))
	return "sha256:" + hex.EncodeToString(sum[:])
}

const zeros = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

type found struct {
	line  int
	image string
}

// pinAll pins every pinnable reference of a file as a resolver would,
// checking first that exactly the expected references were found.
func pinAll(t *testing.T, name string, want []found, problems map[string]bool) (src, out []byte) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	refs, err := Find(name, src)
	if err != nil {
		t.Fatal(err)
	}
	var got []found
	var pins []Pin
	for _, r := range refs {
		if r.Problem != "" {
			if !problems[r.Image] {
				t.Errorf("%s:%d: %s: unexpected problem %q", name, r.Line, r.Image, r.Problem)
			}
			delete(problems, r.Image)
			continue
		}
		got = append(got, found{r.Line, r.Image})
		if r.Pinnable() {
			pins = append(pins, Pin{Ref: r, Digest: digestOf(r.Tag())})
		}
	}
	for img := range problems {
		t.Errorf("%s: %s was not reported as a problem", name, img)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: found\n%v\nwant\n%v", name, got, want)
	}
	out, err = Apply(name, src, pins)
	if err != nil {
		t.Fatal(err)
	}
	return src, out
}

// expect builds the expected file from the input by plain string
// replacement, each old string occurring exactly once.
func expect(t *testing.T, src []byte, repl ...string) string {
	t.Helper()
	s := string(src)
	for i := 0; i < len(repl); i += 2 {
		if n := strings.Count(s, repl[i]); n != 1 {
			t.Fatalf("%q occurs %d times in the input", repl[i], n)
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	return s
}

func sameBytes(t *testing.T, got []byte, want string) {
	t.Helper()
	if string(got) == want {
		return
	}
	g, w := strings.Split(string(got), "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			t.Errorf("line %d:\n got %q\nwant %q", i+1, gl, wl)
		}
	}
	t.Fatal("output differs from the input beyond the image strings")
}

func TestKubernetesMultiDocumentKeepsEverythingButTheImages(t *testing.T) {
	src, out := pinAll(t, "rendered.yaml", []found{
		{23, "docker.io/library/migrate:4.17"},
		{27, "nginx:1.25"},
		{29, "registry.example.com/team/envoy:v1.30.1"},
		{45, "docker.io/library/report:2.0@" + zeros},
		{59, "busybox"},
		{60, "alpine:3.20"},
	}, nil)
	want := expect(t, src,
		`"docker.io/library/migrate:4.17"`, `"docker.io/library/migrate:4.17@`+digestOf("docker.io/library/migrate:4.17")+`"`,
		"&web nginx:1.25\n", "&web nginx:1.25@"+digestOf("nginx:1.25")+"\n",
		`'registry.example.com/team/envoy:v1.30.1'`, `'registry.example.com/team/envoy:v1.30.1@`+digestOf("registry.example.com/team/envoy:v1.30.1")+`'`,
		"report:2.0@"+zeros, "report:2.0@"+digestOf("docker.io/library/report:2.0"),
		"image: busybox ", "image: busybox:latest@"+digestOf("busybox:latest")+" ",
		`"alpine:3.20"`, `"alpine:3.20@`+digestOf("alpine:3.20")+`"`,
	)
	sameBytes(t, out, want)

	// Pinned and current: a second run finds every reference pinned to
	// what it resolves to, so -w changes nothing and --check is quiet.
	refs, err := Find("rendered.yaml", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if r.Digest() != digestOf(r.Tag()) {
			t.Errorf("%d: %s: digest %q after pinning, want %s", r.Line, r.Image, r.Digest(), digestOf(r.Tag()))
		}
	}
}

func TestComposeThroughAnchorsAndMergeKeys(t *testing.T) {
	src, out := pinAll(t, "compose.yaml", []found{
		{4, "ghcr.io/acme/base:2024.1"},
		{8, "nginx:1.25-alpine"},
		{17, "postgres:16"},
	}, nil)
	want := expect(t, src,
		"ghcr.io/acme/base:2024.1 ", "ghcr.io/acme/base:2024.1@"+digestOf("ghcr.io/acme/base:2024.1")+" ",
		`"nginx:1.25-alpine"`, `"nginx:1.25-alpine@`+digestOf("nginx:1.25-alpine")+`"`,
		`'postgres:16'`, `'postgres:16@`+digestOf("postgres:16")+`'`,
	)
	sameBytes(t, out, want)
}

// Helm values: a digest key, present, takes the digest (empty string or
// no value at all); a mapping without one gets it after its tag.
func TestHelmValuesBothShapes(t *testing.T) {
	src, out := pinAll(t, "values.yaml", []found{
		{6, "docker.io/bitnami/redis:7.2.4"},
		{11, "prom/redis-exporter:v1.58.0"},
		{15, "fluent/fluent-bit:3.0"},
		{17, "envoyproxy/envoy:v1.30.1"},
		{23, "busybox:1.36"},
	}, nil)
	want := expect(t, src,
		`digest: ""`, `digest: "`+digestOf("docker.io/bitnami/redis:7.2.4")+`"`,
		"tag: v1.58.0}", "tag: v1.58.0@"+digestOf("prom/redis-exporter:v1.58.0")+"}",
		`"fluent/fluent-bit:3.0"`, `"fluent/fluent-bit:3.0@`+digestOf("fluent/fluent-bit:3.0")+`"`,
		"envoyproxy/envoy:v1.30.1\n", "envoyproxy/envoy:v1.30.1@"+digestOf("envoyproxy/envoy:v1.30.1")+"\n",
		"digest:        #", "digest: "+digestOf("busybox:1.36")+"        #",
	)
	sameBytes(t, out, want)

	// Read back, the mapping's digest key and the tag's suffix are pins.
	refs, err := Find("values.yaml", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if r.Digest() != digestOf(r.Tag()) {
			t.Errorf("%d: %s reads back with digest %q", r.Line, r.Image, r.Digest())
		}
	}
	// A repin after drift replaces the old digest, in either shape.
	var pins []Pin
	for _, r := range refs {
		pins = append(pins, Pin{Ref: r, Digest: digestOf("moved " + r.Tag())})
	}
	again, err := Apply("values.yaml", out, pins)
	if err != nil {
		t.Fatal(err)
	}
	want = expect(t, []byte(want),
		digestOf("docker.io/bitnami/redis:7.2.4"), digestOf("moved docker.io/bitnami/redis:7.2.4"),
		"v1.58.0@"+digestOf("prom/redis-exporter:v1.58.0"), "v1.58.0@"+digestOf("moved prom/redis-exporter:v1.58.0"),
		digestOf("fluent/fluent-bit:3.0"), digestOf("moved fluent/fluent-bit:3.0"),
		digestOf("envoyproxy/envoy:v1.30.1"), digestOf("moved envoyproxy/envoy:v1.30.1"),
		digestOf("busybox:1.36"), digestOf("moved busybox:1.36"),
	)
	sameBytes(t, again, want)
}

// Terraform: image attributes in nested blocks and image items of object
// constructors (an ECS task definition); map keys that only contain
// "image", heredoc text and templates are not references.
func TestTerraformNestedBlocksTabsAndHeredocs(t *testing.T) {
	src, out := pinAll(t, "main.tf", []found{
		{14, "nginx:1.25"},
		{33, "ghcr.io/acme/app:v2.3.1"},
		{38, "busybox:1.36@" + zeros},
		{58, "public.ecr.aws/acme/worker:5"},
		{61, "amazon/aws-for-fluent-bit:2.32.0"},
	}, map[string]bool{`"nginx:${local.tag}"`: true})
	want := expect(t, src,
		`"nginx:1.25"`, `"nginx:1.25@`+digestOf("nginx:1.25")+`"`,
		`"ghcr.io/acme/app:v2.3.1"`, `"ghcr.io/acme/app:v2.3.1@`+digestOf("ghcr.io/acme/app:v2.3.1")+`"`,
		"busybox:1.36@"+zeros, "busybox:1.36@"+digestOf("busybox:1.36"),
		`"public.ecr.aws/acme/worker:5"`, `"public.ecr.aws/acme/worker:5@`+digestOf("public.ecr.aws/acme/worker:5")+`"`,
		`"amazon/aws-for-fluent-bit:2.32.0"`, `"amazon/aws-for-fluent-bit:2.32.0@`+digestOf("amazon/aws-for-fluent-bit:2.32.0")+`"`,
	)
	sameBytes(t, out, want)
}

// What cannot be pinned in place is reported, not mangled.
func TestProblemsAreReportedAndLeftAlone(t *testing.T) {
	src := []byte(`apiVersion: v1
kind: Pod
spec:
  containers:
    - image: "nginx\x3a1.25"
    - image: |
        nginx:1.25
    - image: "Not An Image"
    - image: nginx@` + zeros + `
`)
	refs, err := Find("pod.yaml", src)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 4 {
		t.Fatalf("found %d references, want 4: %+v", len(refs), refs)
	}
	for i, r := range refs[:3] {
		if r.Problem == "" || r.Pinnable() {
			t.Errorf("reference %d (%s) has no problem", i, r.Image)
		}
		if _, err := Apply("pod.yaml", src, []Pin{{Ref: r, Digest: zeros}}); err == nil {
			t.Errorf("reference %d (%s) was pinned", i, r.Image)
		}
	}
	// By digest alone: pinned already, with no tag that could move.
	if r := refs[3]; r.Problem != "" || r.Pinnable() || r.Digest() != zeros {
		t.Errorf("digest-only reference: %+v, pinnable %v", r, r.Pinnable())
	}
	if _, err := Apply("pod.yaml", src, []Pin{{Ref: refs[3], Digest: digestOf("x")}}); err == nil {
		t.Error("a digest-only reference was given a tag and pinned")
	}
	// What the server answers goes into a deployed file only if it is a digest.
	ok, err := Find("c.yaml", []byte("services: {a: {image: a:1}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "latest", "sha256:abc", zeros + "}\nevil: {image: x"} {
		if out, err := Apply("c.yaml", []byte("services: {a: {image: a:1}}\n"), []Pin{{Ref: ok[0], Digest: bad}}); err == nil {
			t.Errorf("pinned to %q: %q", bad, out)
		}
	}
	if _, err := Find("bad.yaml", []byte("a: [b\n")); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("broken YAML: %v, want an error naming the file", err)
	}
	if _, err := Find("bad.tf", []byte("a = {\n")); err == nil || !strings.Contains(err.Error(), "bad.tf") {
		t.Errorf("broken HCL: %v, want an error naming the file", err)
	}
}

// A pin computed on one version of a file is not spliced into another.
func TestApplyRefusesAChangedFile(t *testing.T) {
	src := []byte("services:\n  a:\n    image: nginx:1.25\n")
	refs, err := Find("compose.yaml", src)
	if err != nil || len(refs) != 1 {
		t.Fatalf("%v %v", refs, err)
	}
	changed := []byte("services:\n  a:\n    image: redis:7.20\n")
	if _, err := Apply("compose.yaml", changed, []Pin{{Ref: refs[0], Digest: zeros}}); err == nil {
		t.Fatal("a pin was applied to a file that changed since it was read")
	}
}

func TestWriteFileIsAtomicAndKeepsTheMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(p, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new\n")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new\n" {
		t.Fatalf("read back %q, %v", b, err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640 (%v)", st.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// Which kind a YAML document is decides which image keys count: a Compose
// service's environment may hold an "image" that is not one, and Helm
// values may have a services key of their own.
func TestYAMLKindsAreToldApartByContent(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
		repl      []string // what a pin to zeros changes
	}{
		{"compose", "version: '3'\nx-env: &env {image: not/this:1}\nservices:\n  a:\n    image: a:1\n    environment: {image: not/this:2}\n",
			[]string{"a:1"}, []string{"image: a:1\n", "image: a:1@" + zeros + "\n"}},
		{"helm values with services", "services:\n  web:\n    image: web:1\nworker:\n  image: {repository: worker, tag: '2'}\n",
			[]string{"web:1", "worker:2"}, []string{"web:1", "web:1@" + zeros, "tag: '2'", "tag: '2@" + zeros + "'"}},
		{"kubernetes", "apiVersion: v1\nkind: Pod\nmetadata: {annotations: {image: not/this:1}}\nspec: {containers: [{name: a, image: a:1}]}\n",
			[]string{"a:1"}, []string{"image: a:1}", "image: a:1@" + zeros + "}"}},
		{"json manifest", `{"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a", "image": "a:1"}]}}`,
			[]string{"a:1"}, []string{`"a:1"`, `"a:1@` + zeros + `"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			refs, err := Find(c.name+".yaml", []byte(c.src))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var pins []Pin
			for _, r := range refs {
				got = append(got, r.Image)
				pins = append(pins, Pin{Ref: r, Digest: zeros})
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("found %v, want %v", got, c.want)
			}
			out, err := Apply(c.name+".yaml", []byte(c.src), pins)
			if err != nil {
				t.Fatal(err)
			}
			sameBytes(t, out, expect(t, []byte(c.src), c.repl...))
		})
	}
}

// Files written on Windows keep their line endings, and a YAML byte order
// mark does not shift the edit.
func TestCRLFAndByteOrderMark(t *testing.T) {
	for name, src := range map[string]string{
		"crlf.yaml": "services:\r\n  a:\r\n    image: 'a:1'\r\n  b:\r\n    image: b:2\r\n",
		"bom.yaml":  "\ufeffservices:\n  a:\n    image: a:1\n",
		"crlf.tf":   "resource \"x\" \"y\" {\r\n  image = \"a:1\"\r\n}\r\n",
	} {
		refs, err := Find(name, []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		var pins []Pin
		want := src
		for _, r := range refs {
			pins = append(pins, Pin{Ref: r, Digest: zeros})
			want = strings.Replace(want, r.Image, r.Image+"@"+zeros, 1)
		}
		if len(pins) == 0 {
			t.Fatalf("%s: no references found", name)
		}
		out, err := Apply(name, []byte(src), pins)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(out) != want {
			t.Errorf("%s: got %q, want %q", name, out, want)
		}
	}
}

// BenchmarkPinRenderedChart: a rendered chart of 500 documents and 600
// image references (160 kB), found, pinned and read back. Three YAML
// parses make most of the time.
func BenchmarkPinRenderedChart(b *testing.B) {
	one, err := os.ReadFile(filepath.Join("testdata", "rendered.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	src := []byte(strings.Repeat(string(one), 100))
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		refs, err := Find("big.yaml", src)
		if err != nil {
			b.Fatal(err)
		}
		pins := make([]Pin, 0, len(refs))
		for _, r := range refs {
			if r.Pinnable() {
				pins = append(pins, Pin{Ref: r, Digest: zeros})
			}
		}
		if _, err := Apply("big.yaml", src, pins); err != nil {
			b.Fatal(err)
		}
	}
}
