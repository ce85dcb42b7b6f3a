package warm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// binary builds cmd/multiproxy once per test run: the command a user
// types, flags, config loading, exit status and all.
var binary = struct {
	once sync.Once
	path string
	err  error
}{}

func multiproxyBinary(t *testing.T) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "mpwarm")
		if err != nil {
			binary.err = err
			return
		}
		out := filepath.Join(dir, "multiproxy")
		if b, err := exec.Command("go", "build", "-o", out, "github.com/multiproxy/multiproxy/cmd/multiproxy").CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("go build ./cmd/multiproxy: %v\n%s", err, b)
			return
		}
		binary.path = out
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

// runCommand runs `multiproxy ARGS...` against p's admin API with the
// admin token, as an operator would on the host: no config file, the
// token from MULTIPROXY_ADMIN_TOKEN_FILE, --admin naming the address.
// Its stdout is a pipe, not a terminal. It returns stdout, stderr and the
// exit status.
func runCommand(t *testing.T, p *ts.Proxy, args ...string) (string, string, int) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(multiproxyBinary(t), append(args, "--admin", p.Process.AdminAddr())...)
	cmd.Env = append(os.Environ(), "MULTIPROXY_CONFIG=", "MULTIPROXY_ADMIN_TOKEN_FILE="+tokenFile,
		"MULTIPROXY_DATA_DIR="+filepath.Join(dir, "data"))
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("multiproxy %v: %v", args, err)
		}
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("multiproxy %v did not finish in 3 minutes; stdout:\n%s\nstderr:\n%s", args, out.String(), errb.String())
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// rolloutYAML writes set as what `helm template` prints for a rollout:
// Deployments, a DaemonSet with an init container, a CronJob, a
// StatefulSet inside a `kind: List`, and a bare Pod whose containers
// include the multi-platform index, in documents separated by `---`.
// Every image of set is in it; a few twice, as real charts repeat them.
func rolloutYAML(set []image) string {
	ref := func(i int) string { return set[i].ref }
	container := func(indent string, names string, idx ...int) string {
		var b strings.Builder
		for _, i := range idx {
			fmt.Fprintf(&b, "%s- name: %s%d\n%s  image: %s\n%s  imagePullPolicy: IfNotPresent\n", indent, names, i, indent, ref(i), indent)
		}
		return b.String()
	}
	var b strings.Builder
	for d := range 5 {
		fmt.Fprintf(&b, `# Source: shop/templates/deployment-%d.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-%d
  labels: {app.kubernetes.io/name: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: shop-%d}}
  template:
    metadata: {labels: {app: shop-%d}}
    spec:
      containers:
%s---
`, d, d, d, d, container("      ", "app", 2*d, 2*d+1))
	}
	fmt.Fprintf(&b, `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      initContainers:
%s      containers:
%s---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly-report}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
%s---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db}
  spec:
    serviceName: db
    template:
      spec:
        containers:
%s---
apiVersion: v1
kind: Pod
metadata: {name: debug}
spec:
  initContainers:
%s  containers:
%s`,
		container("      ", "init", 10), container("      ", "agent", 11),
		container("          ", "report", 12, 13),
		container("        ", "db", 14, 15, 0),
		container("  ", "setup", 18),
		container("  ", "tool", 16, 17, 19, 12))
	return b.String()
}

// The issue's end to end, through the command a user runs: `multiproxy
// warm --from rollout.yaml` warms the 20 images of a realistic manifest
// set while clients pull the same images. It exits 0 and its plain output
// names every image as cached; each blob came from the upstream once; a
// second `warm` fetches no blob; and with the upstream stopped every
// image still pulls.
func TestWarmCommandFromManifestsWhileClientsPull(t *testing.T) {
	multiproxyBinary(t) // built before the clock of the test starts
	w := newWatch()
	reg := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w.wrap})
	set := pushSet(t, reg, 20)
	w.reset()
	file := filepath.Join(t.TempDir(), "rollout.yaml")
	if err := os.WriteFile(file, []byte(rolloutYAML(set)), 0o600); err != nil {
		t.Fatal(err)
	}

	p := startWarmProxy(t, reg)

	pulled := pullWhile(t, p, set, 2)
	start := time.Now()
	out, stderr, code := runCommand(t, p, "warm", "--from", file)
	took := time.Since(start)
	pulled()
	if code != 0 {
		t.Fatalf("multiproxy warm --from exited %d; stderr:\n%s\nstdout:\n%s", code, stderr, out)
	}
	requireCachedLines(t, out, set)
	if !strings.Contains(out, fmt.Sprintf("%d of %d images cached", len(set), len(set))) {
		t.Errorf("the summary does not say all %d images are cached:\n%s", len(set), out)
	}
	t.Logf("multiproxy warm --from (%d images, 2 clients pulling): %v", len(set), took)

	var allBlobs []string
	for _, im := range set {
		allBlobs = append(allBlobs, im.blobs...)
	}
	got := w.blobs()
	for _, d := range allBlobs {
		if got[d] != 1 {
			t.Errorf("blob %s fetched upstream %d times, want once", d, got[d])
		}
	}
	if len(got) != len(allBlobs) {
		t.Errorf("the upstream served %d distinct blobs, the set has %d", len(got), len(allBlobs))
	}
	p.Settle(t)

	w.reset()
	out, stderr, code = runCommand(t, p, "warm", "--from", file)
	if code != 0 {
		t.Fatalf("second warm exited %d; stderr:\n%s\nstdout:\n%s", code, stderr, out)
	}
	requireCachedLines(t, out, set)
	if b := w.blobs(); len(b) != 0 {
		t.Errorf("second warm fetched %d blobs upstream: %v", len(b), b)
	}

	reg.Stop()
	for _, im := range set {
		if err := pull(p, t, name, im.repo, im.index); err != nil {
			t.Errorf("with the upstream stopped: %v", err)
		}
	}
}

// requireCachedLines checks that the command's plain output has one
// "cached" line per image of set, in the manifests' spelling.
func requireCachedLines(t *testing.T, out string, set []image) {
	t.Helper()
	cached := map[string]int{}
	for l := range strings.Lines(out) {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "cached" {
			cached[f[1]]++
		}
	}
	for _, im := range set {
		if cached[im.ref] != 1 {
			t.Errorf("the output has %d cached lines for %s, want 1:\n%s", cached[im.ref], im.ref, out)
		}
	}
	if len(cached) != len(set) {
		t.Errorf("the output has cached lines for %d images, the manifests have %d", len(cached), len(set))
	}
}

// `multiproxy warm --dry-run` against the real server prints the plan by
// upstream, names what no upstream serves, exits 1 for it, and nothing is
// fetched: no upstream sees a request, the cache is not even looked up.
func TestWarmCommandDryRunFetchesNothing(t *testing.T) {
	w1, w2 := newWatch(), newWatch()
	one := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w1.wrap})
	two := ts.StartRegistry(t, ts.RegistryOptions{Wrap: w2.wrap})
	ts.PushImage(t, one, "team/a:v1", 1, 1024)
	ts.PushImage(t, one, "team/c:v1", 1, 1024)
	ts.PushImage(t, two, "team/b:v1", 1, 1024)
	w1.reset()
	w2.reset()
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "one.test", Reg: one}, ts.ProxyUpstream{Name: "two.test", Reg: two})
	cfg.Admin.Token = config.Secret(token)
	p := ts.StartProxyConfig(t, cfg)
	dir := t.TempDir()
	file := filepath.Join(dir, "rollout.yaml")
	manifests := `apiVersion: apps/v1
kind: Deployment
metadata: {name: a}
spec:
  template:
    spec:
      initContainers:
      - {name: b, image: two.test/team/b:v1}
      containers:
      - {name: a, image: one.test/team/a:v1}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: c}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - {name: c, image: one.test/team/c:v1}
          - {name: x, image: other.example.com/x/y:1}
`
	if err := os.WriteFile(file, []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}

	out, stderr, code := runCommand(t, p, "warm", "--dry-run", "--from", file, "--platform", "linux/arm64")
	// Upstreams in the order the manifests first name them: the init
	// container comes before the containers.
	want := `would warm 3 images for linux/arm64

two.test (1 image)
  two.test/team/b:v1

one.test (2 images)
  one.test/team/a:v1
  one.test/team/c:v1

skipped (1 image)
  other.example.com/x/y:1  no upstream serves registry other.example.com
`
	if code != 1 || out != want || !strings.Contains(stderr, "1 of 4 images would not be warmed") {
		t.Errorf("exit %d, stdout:\n%s\nwant exit 1 and\n%s\nstderr: %s", code, out, want, stderr)
	}

	// Without the image no upstream serves, the plan is all there is to
	// do: exit 0.
	served := filepath.Join(dir, "served.yaml")
	if err := os.WriteFile(served, []byte(strings.ReplaceAll(manifests, "other.example.com/x/y:1", "two.test/team/b:v1")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, code = runCommand(t, p, "warm", "--dry-run", "--from", served)
	if code != 0 || !strings.Contains(out, "one.test (2 images)") || !strings.Contains(out, "two.test (1 image)") || strings.Contains(out, "skipped") {
		t.Errorf("exit %d, stdout:\n%s\nstderr: %s; want exit 0 and the plan by upstream", code, out, stderr)
	}

	if g1, g2 := w1.gets(), w2.gets(); len(g1)+len(g2) != 0 {
		t.Errorf("a dry run fetched from the upstreams: %v %v", g1, g2)
	}
	if n := p.Metric(t, "multiproxy_cache_misses_total", nil); n != 0 {
		t.Errorf("a dry run looked things up: %v cache misses", n)
	}
	if n := p.Metric(t, "multiproxy_warm_images_total", nil); n != 0 {
		t.Errorf("a dry run counted %v warmed images", n)
	}
}
