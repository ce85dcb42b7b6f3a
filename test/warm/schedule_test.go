package warm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A list in warm.lists is warmed on its schedule with nobody asking: its
// images then pull with the upstream gone, the warm is counted, and its
// summary is logged naming the list.
func TestScheduledListIsWarmed(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "team/nightly:v1", 2, 8<<10)
	ts.PushIndex(t, reg, "team/multi:v1")
	list := filepath.Join(t.TempDir(), "images.txt")
	body := "# the nightly set\n" + name + "/team/nightly:v1\n" + name + "/team/multi:v1   # amd64 only\n"
	if err := os.WriteFile(list, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: name, Reg: reg})
	// warm.lists[].schedule takes robfig/cron's descriptors, as
	// gc.schedule does; a second keeps the test short.
	cfg.Warm = config.Warm{MinRemaining: 10, Concurrency: 4, Lists: []config.WarmList{{From: list, Schedule: "@every 1s"}}}
	p := ts.StartProxyConfig(t, cfg)

	ts.WaitFor(t, 30*time.Second, "the list warmed", func() bool {
		return p.Metric(t, "multiproxy_warm_images_total", map[string]string{"upstream": name, "result": "cached"}) >= 2
	})
	ts.WaitFor(t, 10*time.Second, "the summary logged", func() bool {
		return strings.Contains(p.Logs(), `msg="warm finished" origin=`+list)
	})
	p.Stop() // no scheduled warm runs while the upstream goes
	reg.Stop()
	q := ts.StartProxyConfig(t, withoutLists(p.Config))
	if err := pull(q, t, name, "team/nightly:v1", false); err != nil {
		t.Errorf("scheduled warm did not cache the image: %v", err)
	}
	// The index's default platform, linux/amd64, is cached; its arm64
	// manifest is not, so the whole index cannot be validated offline.
	if err := pullPlatform(q, t, name, "team/multi:v1", "amd64"); err != nil {
		t.Errorf("scheduled warm did not cache the index's amd64 image: %v", err)
	}
}

// warm.lists[].from also takes Kubernetes manifests, as `helm template`
// prints them: the images of their pod specs are warmed on the schedule,
// and a reference that cannot be parsed is logged and left out rather
// than stopping the others.
func TestScheduledManifestsAreWarmed(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "team/web:v1", 2, 8<<10)
	ts.PushImage(t, reg, "team/init:v1", 1, 4<<10)
	file := filepath.Join(t.TempDir(), "rollout.yaml")
	body := `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers:
      - name: init
        image: ` + name + `/team/init:v1
      containers:
      - name: web
        image: ` + name + `/team/web:v1
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: report
            image: ` + name + `/Team/Bad_Ref!
`
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: name, Reg: reg})
	cfg.Warm = config.Warm{MinRemaining: 10, Concurrency: 4, Lists: []config.WarmList{{From: file, Schedule: "@every 1s"}}}
	p := ts.StartProxyConfig(t, cfg)

	ts.WaitFor(t, 30*time.Second, "the manifests' images warmed", func() bool {
		return p.Metric(t, "multiproxy_warm_images_total", map[string]string{"upstream": name, "result": "cached"}) >= 2
	})
	if logs := p.Logs(); !strings.Contains(logs, `msg="scheduled warm: image skipped"`) || !strings.Contains(logs, "Bad_Ref!") {
		t.Errorf("the invalid reference was not logged as skipped:\n%s", logs)
	}
	p.Stop()
	reg.Stop()
	q := ts.StartProxyConfig(t, withoutLists(p.Config))
	for _, repo := range []string{"team/web:v1", "team/init:v1"} {
		if err := pull(q, t, name, repo, false); err != nil {
			t.Errorf("scheduled warm of the manifests did not cache %s: %v", repo, err)
		}
	}
}

func withoutLists(cfg config.Config) config.Config {
	cfg.Warm.Lists = nil
	return cfg
}

// A list added by a config reload is warmed without a restart.
func TestReloadAddsAList(t *testing.T) {
	reg := ts.StartRegistry(t, ts.RegistryOptions{})
	ts.PushImage(t, reg, "team/later:v1", 1, 4<<10)
	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte(name+"/team/later:v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: name, Reg: reg})
	next := p.Config
	next.Warm.Lists = []config.WarmList{{From: list, Schedule: "@every 1s"}}
	if err := p.Process.Reload(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 30*time.Second, "the list added by the reload warmed", func() bool {
		return p.Metric(t, "multiproxy_warm_images_total", map[string]string{"upstream": name, "result": "cached"}) >= 1
	})
}
