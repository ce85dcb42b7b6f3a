package imageref

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func fromFile(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	refs, err := FromManifests(name, f)
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

func TestManifestsFindEveryContainerImageInFirstSeenOrder(t *testing.T) {
	cases := []struct {
		file string
		want []string
	}{
		// Comments, an empty document, a ConfigMap whose text mentions
		// an image, an image shared by an init container and a container,
		// a StatefulSet and a helm test pod.
		{"helm-template.yaml", []string{
			"ghcr.io/example/webapp:1.4.2",
			"quay.io/prometheus/statsd-exporter:v0.26.1",
			"redis:7.2",
			"busybox",
		}},
		// `kubectl get pods -A -o json`: a List; the images in status and
		// in the last-applied annotation are not what the spec asks for.
		{"kubectl-pods.json", []string{
			"registry.k8s.io/coredns/coredns:v1.11.1",
			"registry.k8s.io/kube-proxy:v1.29.2",
		}},
		{"cronjob.yaml", []string{
			"registry.k8s.io/kubectl:v1.31.0@sha256:0d3b5e2f6b9a7d4c1e8f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f",
		}},
		{"daemonset.yaml", []string{"quay.io/cilium/cilium:v1.16.1", "docker.io/fluent/fluent-bit:3.1"}},
		{"ephemeral-pod.yaml", []string{"nginx:1.25", "busybox:1.36"}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			if got := fromFile(t, c.file); !slices.Equal(got, c.want) {
				t.Errorf("got %q\nwant %q", got, c.want)
			}
		})
	}
}

func TestManifestsWithPodTemplatesOfEveryKind(t *testing.T) {
	// kustomize build style: no comments; every workload kind, and a
	// custom resource (an Argo Rollout) that embeds a pod template.
	var docs []string
	for i, kind := range []string{"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController", "Rollout"} {
		docs = append(docs, "apiVersion: apps/v1\nkind: "+kind+"\nmetadata:\n  name: w\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: example.org/app/"+strings.ToLower(kind)+":v"+string(rune('1'+i))+"\n")
	}
	got, err := FromManifests("kustomize", strings.NewReader(strings.Join(docs, "---\n")))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.org/app/deployment:v1", "example.org/app/statefulset:v2", "example.org/app/daemonset:v3",
		"example.org/app/replicaset:v4", "example.org/app/job:v5", "example.org/app/replicationcontroller:v6", "example.org/app/rollout:v7"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestAnchorsAndAliases(t *testing.T) {
	// Hand-written manifests share parts with anchors; an alias may stand
	// for a container list, an entry or an image defined outside a pod
	// spec.
	in := `x-versions:
  proxy: &proxy envoyproxy/envoy:v1.31.0
x-containers: &sidecars
  - name: proxy
    image: *proxy
x-debug: &debug
  name: debug
  image: busybox:1.36
kind: Pod
spec:
  initContainers: *sidecars
  containers:
  - name: app
    image: ghcr.io/example/app:2
  ephemeralContainers:
  - *debug
`
	got, err := FromManifests("anchors.yaml", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"envoyproxy/envoy:v1.31.0", "ghcr.io/example/app:2", "busybox:1.36"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestJSONValuesOneAfterAnother(t *testing.T) {
	// `kubectl get pods -o json | jq -c '.items[]'` prints one object per
	// line without `---`, which is not a YAML stream.
	in := `{"kind":"Pod","spec":{"containers":[{"name":"a","image":"nginx:1.25"}]}}
{"kind":"Pod","spec":{"initContainers":[{"name":"b","image":"alpine:3.20"}],"containers":[{"name":"a","image":"docker.io/library/nginx:1.25"}]}}
`
	got, err := FromManifests("pods.jsonl", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// docker.io/library/nginx:1.25 is nginx:1.25, spelled out.
	if want := []string{"nginx:1.25", "alpine:3.20"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestByteOrderMarkIsSkipped(t *testing.T) {
	for _, in := range []string{"\ufeff{\"spec\": {\"containers\": [{\"image\": \"nginx\"}]}}", "\ufeffspec:\n  containers:\n  - image: nginx\n"} {
		got, err := FromManifests("bom", strings.NewReader(in))
		if err != nil || !slices.Equal(got, []string{"nginx"}) {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
}

func TestManifestErrorsNameFileDocumentAndLine(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"yaml syntax", "kind: A\n---\nkind: B\nspec: [\n", "bad.yaml: document 2: yaml: line 4"},
		{"image not a string", "kind: A\n---\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: {name: nginx}\n",
			"bad.yaml: document 2: line 7: containers[0].image: not a string"},
		{"invalid reference", "kind: Pod\nspec:\n  initContainers:\n  - name: a\n    image: nginx\n  - name: b\n    image: Nginx:UPPER\n",
			`bad.yaml: document 1: line 7: initContainers[1].image: invalid reference "Nginx:UPPER"`},
		{"json syntax", "{\"kind\": \"Pod\"}\n{\"kind\": \"Pod\",\n \"spec\": ]\n}\n", "bad.yaml: document 2: line 3: invalid character"},
		{"json invalid reference", "{\"kind\": \"Pod\"}\n\n{\"kind\": \"Pod\",\n \"spec\": {\"containers\": [\n  {\"image\": \"a b\"}]}}\n",
			`bad.yaml: document 2: line 5: containers[0].image: invalid reference "a b"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := FromManifests("bad.yaml", strings.NewReader(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestEmptyImagesAreNotWarmed(t *testing.T) {
	got, err := FromManifests("m", strings.NewReader("kind: Pod\nspec:\n  containers:\n  - name: a\n    image: \"\"\n  - name: b\n    image:\n  - name: c\n    image: alpine\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"alpine"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestList(t *testing.T) {
	in := "# images of the 1.4 release\n\nnginx:1.25\n  ghcr.io/example/webapp:1.4.2\t# the app\n    # indented comment\nnginx:1.25\ndocker.io/library/nginx:1.25\nquay.io/x/y:v1@sha256:0d3b5e2f6b9a7d4c1e8f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f\n"
	got, err := FromList("list.txt", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"nginx:1.25", "ghcr.io/example/webapp:1.4.2",
		"quay.io/x/y:v1@sha256:0d3b5e2f6b9a7d4c1e8f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestListErrorsNameFileAndLine(t *testing.T) {
	for in, want := range map[string]string{
		"nginx\n\nnginx alpine\n":    "list.txt:3: 2 words",
		"# c\nnginx\nhttp://x/y:1\n": `list.txt:3: invalid reference "http://x/y:1"`,
		// Not a comment: nothing is cut off a reference silently.
		"nginx:1.25#latest\n": `list.txt:1: invalid reference "nginx:1.25#latest"`,
	} {
		_, err := FromList("list.txt", strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want it to contain %q", in, err, want)
		}
	}
}

func TestSetKeepsTheFirstSpelling(t *testing.T) {
	var s Set
	for _, r := range []string{"nginx", "docker.io/library/nginx:latest", "index.docker.io/library/nginx", "nginx:1.25", "ghcr.io/a/b"} {
		if err := s.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"nginx", "nginx:1.25", "ghcr.io/a/b"}; !slices.Equal(s.List(), want) {
		t.Errorf("got %q, want %q", s.List(), want)
	}
}

// A rendered chart of 500 Deployments, about what `helm template` of a
// large platform prints.
func BenchmarkFromManifests(b *testing.B) {
	var sb strings.Builder
	for i := range 500 {
		sb.WriteString("---\n# Source: platform/templates/deploy-" + strconv.Itoa(i) + ".yaml\n")
		sb.WriteString("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: svc-" + strconv.Itoa(i) +
			"\n  labels: {app: svc, tier: backend}\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels: {app: svc}\n    spec:\n" +
			"      initContainers:\n      - name: init\n        image: busybox:1.36\n        command: [sh, -c, 'true']\n" +
			"      containers:\n      - name: app\n        image: ghcr.io/example/svc-" + strconv.Itoa(i) + ":1.0." + strconv.Itoa(i) +
			"\n        ports: [{containerPort: 8080}]\n        env: [{name: A, value: b}, {name: C, value: d}]\n" +
			"        resources: {requests: {cpu: 100m, memory: 128Mi}}\n")
	}
	data := sb.String()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		refs, err := FromManifests("chart", strings.NewReader(data))
		if err != nil || len(refs) != 501 {
			b.Fatal(len(refs), err)
		}
	}
}

// One setting, warm.lists[].from, takes a hand-written list or what
// `helm template` prints: the file's content decides which it is.
func TestFromFileTellsListsFromManifests(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"list", "# rollout\nnginx:1.25\nregistry.k8s.io/pause:3.10   # sandbox\n", []string{"nginx:1.25", "registry.k8s.io/pause:3.10"}},
		{"yaml", "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: nginx:1.25\n", []string{"nginx:1.25"}},
		{"kind List", "items:\n- spec:\n    initContainers:\n    - image: busybox:1\n", []string{"busybox:1"}},
		{"json", `{"kind":"Pod","spec":{"containers":[{"image":"redis:7"}]}}`, []string{"redis:7"}},
	} {
		got, err := FromFile(c.name, strings.NewReader(c.body), nil)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: FromFile = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	// A manifest with a YAML error is still read as one, so the error
	// is YAML's, not a list's "2 words".
	_, err := FromFile("bad.yaml", strings.NewReader("apiVersion: v1\nkind: Pod\nspec: [\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml: document 1") {
		t.Errorf("broken manifest: %v, want a YAML error naming the document", err)
	}
}

// With a bad func, an invalid reference is reported and left out, in a
// list and in manifests alike; the others are still read.
func TestFromFileSkipsBadReferencesWhenAsked(t *testing.T) {
	for name, body := range map[string]string{
		"list":      "nginx:1.25\nNot_A/Ref!\nredis:7\n",
		"manifests": "kind: Pod\nspec:\n  containers:\n  - image: nginx:1.25\n  - image: Not_A/Ref!\n  - image: redis:7\n",
	} {
		var bad []error
		got, err := FromFile(name, strings.NewReader(body), func(err error) { bad = append(bad, err) })
		if err != nil || !slices.Equal(got, []string{"nginx:1.25", "redis:7"}) {
			t.Errorf("%s: FromFile = %q, %v", name, got, err)
		}
		if len(bad) != 1 || !strings.Contains(bad[0].Error(), "Not_A/Ref!") {
			t.Errorf("%s: reported %v, want the one bad reference", name, bad)
		}
		if _, err := FromFile(name, strings.NewReader(body), nil); err == nil {
			t.Errorf("%s: without bad, an invalid reference does not fail the file", name)
		}
	}
}
