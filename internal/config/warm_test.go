package config_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
)

const warmUpstream = "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\n"

// Without a warm section a warm keeps ten pulls for the rollout and fills
// four images at a time; a file's section is read as written and printed
// back by `config print`.
func TestWarmSection(t *testing.T) {
	dir := t.TempDir()
	def, err := config.Load(config.LoadOptions{File: writeConfig(t, dir, warmUpstream), Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if def.Warm.MinRemaining != 10 || def.Warm.Concurrency != 4 || len(def.Warm.Platforms) != 0 {
		t.Errorf("default warm = %+v, want min_remaining 10, concurrency 4, no platforms", def.Warm)
	}

	list := writeFile(t, dir, "images.txt", "docker.io/library/nginx:1.25\n")
	file := writeConfig(t, dir, `warm:
  platforms: [linux/amd64, linux/arm64/v8]
  min_remaining: 0
  concurrency: 8
  lists:
    - from: `+list+`
      schedule: "0 3 * * *"
`+warmUpstream)
	cfg, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Warm
	if !slices.Equal(w.Platforms, []string{"linux/amd64", "linux/arm64/v8"}) || w.MinRemaining != 0 || w.Concurrency != 8 ||
		len(w.Lists) != 1 || w.Lists[0].From != list || w.Lists[0].Schedule != "0 3 * * *" {
		t.Errorf("warm = %+v", w)
	}
	var buf bytes.Buffer
	if err := cfg.WriteYAML(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"warm:", "min_remaining: 0", "concurrency: 8", "linux/arm64/v8", "schedule: 0 3 * * *"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("config print lacks %q:\n%s", want, buf.String())
		}
	}
	again, err := config.Load(config.LoadOptions{File: writeFile(t, dir, "printed.yaml", buf.String()), Env: noEnv})
	if err != nil {
		t.Fatalf("printed config does not load: %v", err)
	}
	if again.Warm.MinRemaining != 0 || again.Warm.Concurrency != 8 || len(again.Warm.Lists) != 1 {
		t.Errorf("printed warm reloads as %+v", again.Warm)
	}
}

// Every bad warm setting is named by its path, all in one run.
func TestWarmInvalid(t *testing.T) {
	dir := t.TempDir()
	file := writeConfig(t, dir, `warm:
  platforms: [linux, "linux/amd64", "a/b/c/d"]
  min_remaining: -1
  concurrency: -2
  lists:
    - {from: `+filepath.Join(dir, "missing.txt")+`, schedule: "0 3 * * *"}
    - {from: `+dir+`, schedule: "every night"}
    - {schedule: "0 3 * * *"}
    - {from: `+writeFile(t, dir, "ok.txt", "")+`}
  lits: []
`+warmUpstream)
	_, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
	requireFieldError(t, err, "warm.lits", "unknown key")
	file = strings.Replace(string(mustRead(t, file)), "  lits: []\n", "", 1)
	_, err = config.Load(config.LoadOptions{File: writeFile(t, dir, "b.yaml", file), Env: noEnv})
	for field, msg := range map[string]string{
		"warm.platforms[0]":      `"linux" is not a platform`,
		"warm.platforms[2]":      `"a/b/c/d" is not a platform`,
		"warm.min_remaining":     "must not be negative",
		"warm.concurrency":       "must be positive",
		"warm.lists[0].from":     "no such file",
		"warm.lists[1].from":     "is a directory",
		"warm.lists[1].schedule": `invalid cron expression "every night"`,
		"warm.lists[2].from":     "required",
		"warm.lists[3].schedule": "required",
	} {
		requireFieldError(t, err, field, msg)
	}
	for _, ve := range validationErrors(err) {
		if ve.Field == "warm.platforms[1]" {
			t.Errorf("a good platform is reported: %v", ve)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
