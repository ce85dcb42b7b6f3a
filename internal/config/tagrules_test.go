package config_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/config"
)

// Tag rules load in order, print back as written, and a bad glob or
// duration is named down to the rule's field.
func TestTagRulesAndPins(t *testing.T) {
	dir := t.TempDir()
	file := writeConfig(t, dir, `
upstreams:
  - name: docker.io
    listen: ":5000"
    remote: https://registry-1.docker.io
    tag_freshness: 5m
    tag_rules:
      - {match: "v*.*.*", freshness: 24h}
      - {match: latest, freshness: 0s}
    pins: ["library/nginx:1.25", "library/alpine@sha256:0000000000000000000000000000000000000000000000000000000000000000"]
`)
	cfg, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	u := cfg.Upstreams[0]
	want := []config.TagRule{{Match: "v*.*.*", Freshness: 24 * time.Hour}, {Match: "latest", Freshness: 0}}
	if len(u.TagRules) != 2 || u.TagRules[0] != want[0] || u.TagRules[1] != want[1] {
		t.Errorf("tag_rules = %+v, want %+v", u.TagRules, want)
	}
	if len(u.Pins) != 2 {
		t.Errorf("pins = %v", u.Pins)
	}
	var out bytes.Buffer
	if err := cfg.WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"tag_rules:", "- match: v*.*.*", "freshness: 24h0m0s", "- match: latest", "freshness: 0s", "pins:", "- library/nginx:1.25"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("config print lacks %q:\n%s", line, out.String())
		}
	}
}

func TestTagRulesAndPinsInvalid(t *testing.T) {
	const head = "upstreams:\n  - name: docker.io\n    listen: \":5000\"\n    remote: https://registry-1.docker.io\n"
	tests := []struct{ name, yaml, field, msg string }{
		{"bad glob", head + "    tag_rules: [{match: 'v*', freshness: 1h}, {match: 'v[1-', freshness: 1h}]\n",
			"upstreams[0].tag_rules[1].match", "invalid glob"},
		{"empty glob", head + "    tag_rules: [{freshness: 1h}]\n",
			"upstreams[0].tag_rules[0].match", "required"},
		{"bad duration", head + "    tag_rules: [{match: 'v*', freshness: 1h}, {match: latest, freshness: soon}]\n",
			"upstreams[0].tag_rules[1].freshness", "invalid duration"},
		{"negative duration", head + "    tag_rules: [{match: latest, freshness: -1s}]\n",
			"upstreams[0].tag_rules[0].freshness", "must not be negative"},
		{"unknown rule key", head + "    tag_rules: [{match: latest, fresh: 1s}]\n",
			"upstreams[0].tag_rules[0].fresh", "unknown key"},
		{"pin without tag", head + "    pins: [library/nginx]\n",
			"upstreams[0].pins[0]", "names no tag or digest"},
		{"pin with bad digest", head + "    pins: ['library/nginx:1', 'library/nginx@sha256:abc']\n",
			"upstreams[0].pins[1]", "invalid digest"},
		{"pin with bad repository", head + "    pins: ['Library/Nginx:1']\n",
			"upstreams[0].pins[0]", "invalid repository"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := writeConfig(t, t.TempDir(), tc.yaml)
			_, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
			requireFieldError(t, err, tc.field, tc.msg)
		})
	}
}

func TestParsePin(t *testing.T) {
	for in, want := range map[string]config.PinRef{
		"library/nginx:1.25":    {Repo: "library/nginx", Tag: "1.25"},
		"localhost/a/b:latest":  {Repo: "localhost/a/b", Tag: "latest"},
		"a@sha256:" + zeros64(): {Repo: "a", Digest: digest.Digest("sha256:" + zeros64())},
	} {
		got, err := config.ParsePin(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParsePin(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

func zeros64() string { return strings.Repeat("0", 64) }
