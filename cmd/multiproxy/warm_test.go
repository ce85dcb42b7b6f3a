package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/warm"
)

// warmServer answers POST /api/v1/warm as the protocol says, with a fixed
// outcome per image: images of example.com are skipped, those named
// "broken" fail, the rest are cached. It is a stand-in for the server's
// engine, to test what the command shows and how it exits; the warm
// itself is tested end to end against the real server elsewhere.
type warmServer struct {
	*httptest.Server
	mu   sync.Mutex
	got  warm.Request
	auth string
	// cut stops the answer before its summary, as a dying server would.
	cut bool
}

func newWarmServer(t *testing.T) *warmServer {
	ws := &warmServer{}
	ws.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req warm.Request
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || len(req.Images) == 0 {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"bad warm request"}`))
			return
		}
		ws.mu.Lock()
		ws.got, ws.auth = req, r.Header.Get("Authorization")
		cut := ws.cut
		ws.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		send := func(ev warm.Event) {
			_ = enc.Encode(ev)
			w.(http.Flusher).Flush()
		}
		var sum warm.Event
		sum.Event = warm.EventSummary
		var routed []string
		for _, im := range req.Images {
			if strings.HasPrefix(im, "example.com/") {
				send(warm.Event{Event: warm.EventSkipped, Image: im, Reason: "no upstream serves registry example.com"})
				sum.Skipped++
				continue
			}
			send(warm.Event{Event: warm.EventPlan, Image: im, Upstream: upstreamOf(im)})
			routed = append(routed, im)
		}
		if req.DryRun {
			send(sum)
			return
		}
		for i, im := range routed {
			if cut && i == 1 {
				return
			}
			up := upstreamOf(im)
			if strings.Contains(im, "broken") {
				send(warm.Event{Event: warm.EventFailed, Image: im, Upstream: up, Error: "manifest unknown"})
				sum.Failed++
				continue
			}
			send(warm.Event{Event: warm.EventStart, Image: im, Upstream: up, Total: 3 << 20})
			send(warm.Event{Event: warm.EventProgress, Image: im, Bytes: 1 << 20, Total: 3 << 20})
			send(warm.Event{Event: warm.EventDone, Image: im, Upstream: up, Digest: "sha256:" + strings.Repeat("ab", 32), Bytes: 3 << 20, Blobs: 3})
			sum.Cached++
			sum.Bytes += 3 << 20
		}
		sum.Seconds = 2
		send(sum)
	}))
	t.Cleanup(ws.Close)
	return ws
}

func (ws *warmServer) request() warm.Request {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.got
}

func upstreamOf(im string) string {
	if i := strings.IndexByte(im, '/'); i > 0 && strings.ContainsAny(im[:i], ".:") {
		return im[:i]
	}
	return "docker.io"
}

// runIn is run with a standard input.
func runIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	t.Setenv("MULTIPROXY_CONFIG", "")
	return execute(strings.NewReader(stdin), args...)
}

const deployYAML = `# Source: app/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  template:
    spec:
      initContainers:
      - name: migrate
        image: ghcr.io/example/app:1.4.2
      containers:
      - name: app
        image: ghcr.io/example/app:1.4.2
      - name: proxy
        image: nginx:1.25
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: report
            image: quay.io/example/report:v3
`

func TestWarmCachesEveryImageAndExitsZero(t *testing.T) {
	ws := newWarmServer(t)
	dir := t.TempDir()
	list := writeFile(t, dir, "list.txt", "# base images\nalpine:3.20\nnginx:1.25\n")
	deploy := writeFile(t, dir, "deploy.yaml", deployYAML)

	out, stderr, code := runIn(t, "", "warm", "--admin", ws.URL, "redis:7", "-f", list, "--from", deploy, "--platform", "linux/amd64,linux/arm64")
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr, out)
	}
	req := ws.request()
	// Arguments, then lists, then manifests; nginx:1.25 once.
	want := []string{"redis:7", "alpine:3.20", "nginx:1.25", "ghcr.io/example/app:1.4.2", "quay.io/example/report:v3"}
	if !slices.Equal(req.Images, want) || !slices.Equal(req.Platforms, []string{"linux/amd64", "linux/arm64"}) || req.DryRun {
		t.Errorf("server got %+v, want images %q", req, want)
	}
	wantOut := `cached   redis:7  3.0 MiB, 3 blobs  sha256:abababababab
cached   alpine:3.20  3.0 MiB, 3 blobs  sha256:abababababab
cached   nginx:1.25  3.0 MiB, 3 blobs  sha256:abababababab
cached   ghcr.io/example/app:1.4.2  3.0 MiB, 3 blobs  sha256:abababababab
cached   quay.io/example/report:v3  3.0 MiB, 3 blobs  sha256:abababababab

IMAGE                      UPSTREAM   STATUS  SIZE     DETAIL
redis:7                    docker.io  cached  3.0 MiB
alpine:3.20                docker.io  cached  3.0 MiB
nginx:1.25                 docker.io  cached  3.0 MiB
ghcr.io/example/app:1.4.2  ghcr.io    cached  3.0 MiB
quay.io/example/report:v3  quay.io    cached  3.0 MiB

5 of 5 images cached; 15.0 MiB in 2s
`
	if out != wantOut {
		t.Errorf("stdout:\n%s\nwant\n%s", out, wantOut)
	}
}

func TestWarmExitsOneWhenAnImageIsNotCached(t *testing.T) {
	ws := newWarmServer(t)
	out, stderr, code := runIn(t, "", "warm", "--admin", ws.URL, "nginx:1.25", "ghcr.io/example/broken:1", "example.com/x:1")
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	for _, want := range []string{
		"skipped  example.com/x:1: no upstream serves registry example.com\n",
		"failed   ghcr.io/example/broken:1 via ghcr.io: manifest unknown\n",
		"ghcr.io/example/broken:1  ghcr.io    failed   -        manifest unknown\n",
		"example.com/x:1           -          skipped  -        no upstream serves registry example.com\n",
		"1 of 3 images cached, 1 failed, 1 skipped; 3.0 MiB in 2s\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, "2 of 3 images are not cached") {
		t.Errorf("stderr: %q", stderr)
	}
}

func TestWarmAnswerCutShortExitsOneWithTheTable(t *testing.T) {
	ws := newWarmServer(t)
	ws.cut = true
	out, stderr, code := runIn(t, "", "warm", "--admin", ws.URL, "nginx:1.25", "redis:7")
	if code != 1 || !strings.Contains(stderr, "ended before its summary") {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	if !strings.Contains(out, "\nredis:7     docker.io  unfinished  -\n") {
		t.Errorf("stdout:\n%s", out)
	}
}

func TestWarmDryRunListsThePlanByUpstream(t *testing.T) {
	ws := newWarmServer(t)
	out, stderr, code := runIn(t, deployYAML, "warm", "--admin", ws.URL, "--dry-run", "--from", "-", "redis:7")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !ws.request().DryRun {
		t.Error("the request was not a dry run")
	}
	want := `would warm 4 images for the server's default (warm.platforms, else linux/amd64)

docker.io (2 images)
  redis:7
  nginx:1.25

ghcr.io (1 image)
  ghcr.io/example/app:1.4.2

quay.io (1 image)
  quay.io/example/report:v3
`
	if out != want {
		t.Errorf("stdout:\n%s\nwant\n%s", out, want)
	}

	out, stderr, code = runIn(t, "", "warm", "--admin", ws.URL, "--dry-run", "nginx", "example.com/x:1")
	if code != 1 || !strings.Contains(out, "skipped (1 image)\n  example.com/x:1  no upstream serves registry example.com\n") ||
		!strings.Contains(stderr, "1 of 2 images would not be warmed") {
		t.Errorf("exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestWarmUsageErrorsExitTwo(t *testing.T) {
	ws := newWarmServer(t)
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", "kind: ConfigMap\n---\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: Nginx:Latest\n")
	empty := writeFile(t, dir, "cm.yaml", "kind: ConfigMap\ndata: {a: b}\n")
	badList := writeFile(t, dir, "list.txt", "nginx\nalpine 3.20\n")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no images", nil, "no images to warm"},
		{"bad argument", []string{"Nginx:Latest"}, `invalid reference "Nginx:Latest"`},
		{"bad platform", []string{"nginx", "--platform", "linux"}, `--platform "linux": want os/arch[/variant]`},
		{"missing file", []string{"-f", dir + "/nope.txt"}, "nope.txt: no such file"},
		{"bad list", []string{"-f", badList}, "list.txt:2: 2 words"},
		{"bad manifest", []string{"--from", bad}, "bad.yaml: document 2: line 7: containers[0].image"},
		{"manifest without images", []string{"--from", empty}, "cm.yaml: no image references in it"},
		{"stdin twice", []string{"-f", "-", "--from", "-"}, "standard input (-) can be read only once"},
		{"unknown flag", []string{"nginx", "--platforms", "linux/amd64"}, "unknown flag"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := runIn(t, "nginx\n", append([]string{"warm", "--admin", ws.URL}, c.args...)...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, c.want)
			}
		})
	}
}

func TestWarmRequestRefusedByTheServerExitsTwo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"platform \"linux/amd64/v9/x\" is not os/arch[/variant]"}`))
	}))
	defer srv.Close()
	out, stderr, code := runIn(t, "", "warm", "--admin", srv.URL, "nginx")
	if code != 2 || !strings.Contains(stderr, `warm: admin API: 400: platform`) || out != "" {
		t.Errorf("exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
}

func TestWarmServerDownExitsOne(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	out, stderr, code := runIn(t, "", "warm", "--admin", url, "nginx")
	if code != 1 || !strings.Contains(stderr, "admin API "+url) || out != "" {
		t.Errorf("exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
}

func TestWarmSendsTheConfiguredAdminToken(t *testing.T) {
	ws := newWarmServer(t)
	dir := t.TempDir()
	tok := writeFile(t, dir, "admin-token", "s3cret\n")
	cfg := writeFile(t, dir, "multiproxy.yaml", "admin:\n  listen: "+strings.TrimPrefix(ws.URL, "http://")+"\n  token_file: "+tok+"\n"+
		"upstreams:\n  - {name: docker.io, listen: '127.0.0.1:5999', remote: 'https://registry-1.docker.io'}\n")
	if _, stderr, code := runIn(t, "", "warm", "--config", cfg, "nginx"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.auth != "Bearer s3cret" {
		t.Errorf("Authorization = %q", ws.auth)
	}
}

// cancelOnWrite cancels a context at the command's first output, which
// it writes only once it has taken an event.
type cancelOnWrite struct {
	bytes.Buffer
	cancel context.CancelFunc
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	c.cancel()
	return c.Buffer.Write(p)
}

func TestWarmInterruptedShowsWhatIsUnfinished(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"event":"plan","image":"nginx","upstream":"docker.io"}` + "\n" +
			`{"event":"skipped","image":"example.com/x:1","reason":"no upstream serves registry example.com"}` + "\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancelled as Ctrl-C does, once the skipped line is out.
	out := &cancelOnWrite{cancel: cancel}
	err := runWarm(ctx, admin.Client{Base: srv.URL}, out, warm.Request{Images: []string{"nginx", "example.com/x:1"}})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || err.Error() != "warm: interrupted" {
		t.Fatalf("err = %v", err)
	}
	want := `skipped  example.com/x:1: no upstream serves registry example.com

IMAGE            UPSTREAM   STATUS      SIZE  DETAIL
nginx            docker.io  unfinished  -
example.com/x:1  -          skipped     -     no upstream serves registry example.com

0 of 2 images cached, 1 skipped, 1 unfinished
`
	if out.String() != want {
		t.Errorf("stdout:\n%s\nwant\n%s", out.String(), want)
	}
}
