package main

import (
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/gc"
	"github.com/multiproxy/multiproxy/internal/version"
)

// buildBinary builds the multiproxy binary into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "multiproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func TestVersion(t *testing.T) {
	want := "multiproxy " + version.Version() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, stderr, code := run(t, args...)
		if code != 0 || out != want {
			t.Errorf("%v: exit %d, printed %q (stderr %q), want exit 0 and %q", args, code, out, stderr, want)
		}
	}

	// The real binary, whose build info the toolchain wrote.
	bin := buildBinary(t)
	var first string
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.HasPrefix(string(out), "multiproxy ") || strings.Count(string(out), "\n") != 1 ||
			strings.TrimSpace(strings.TrimPrefix(string(out), "multiproxy ")) == "" {
			t.Errorf("%v printed %q, want one line \"multiproxy VERSION\"", args, out)
		}
		if first == "" {
			first = string(out)
		} else if string(out) != first {
			t.Errorf("version printed %q, --version %q", first, out)
		}
	}
}

// printed is what `config print` writes, as far as these tests read it.
type printed struct {
	Upstreams []struct {
		Name string
		GC   struct{ Schedule string }
	}
}

func configPrint(t *testing.T, args ...string) printed {
	t.Helper()
	out, stderr, code := run(t, append([]string{"config", "print"}, args...)...)
	if code != 0 {
		t.Fatalf("config print: exit %d: %s", code, stderr)
	}
	var p printed
	if err := yaml.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("config print output is not YAML: %v\n%s", err, out)
	}
	return p
}

// config print shows the GC slot each upstream really gets: the server hands
// the upstreams to gc.NewScheduler in config order, and an upstream without
// gc.schedule gets gc.DefaultSchedules(n)[i].
func TestConfigPrintShowsEffectiveGCSchedule(t *testing.T) {
	t.Setenv("MULTIPROXY_CONFIG", "")
	p := configPrint(t)
	if len(p.Upstreams) != 5 {
		t.Fatalf("built-in default printed %d upstreams", len(p.Upstreams))
	}
	want := []string{"0 3 * * 0", "30 3 * * 0", "0 4 * * 0", "30 4 * * 0", "0 5 * * 0"}
	for i, u := range p.Upstreams {
		if u.GC.Schedule != want[i] || u.GC.Schedule != gc.DefaultSchedules(5)[i] {
			t.Errorf("%s: gc.schedule %q, want %q", u.Name, u.GC.Schedule, want[i])
		}
	}

	file := writeFile(t, t.TempDir(), "c.yaml", `upstreams:
  - {name: a.io, listen: ':5000', remote: 'https://a.io'}
  - {name: b.io, listen: ':5001', remote: 'https://b.io', gc: {schedule: '15 1 * * *'}}
  - {name: c.io, listen: ':5002', remote: 'https://c.io'}
`)
	p = configPrint(t, "--config", file)
	slots := gc.DefaultSchedules(3)
	for i, want := range []string{slots[0], "15 1 * * *", slots[2]} {
		if got := p.Upstreams[i].GC.Schedule; got != want {
			t.Errorf("upstreams[%d].gc.schedule printed %q, want %q", i, got, want)
		}
	}

	// What print shows loads again, as the same configuration.
	out, _, _ := run(t, "config", "print", "--config", file)
	again := writeFile(t, t.TempDir(), "again.yaml", out)
	if p2 := configPrint(t, "--config", again); !reflect.DeepEqual(p2, p) {
		t.Errorf("printed config prints differently:\n%+v\n%+v", p2, p)
	}
}

// Every MULTIPROXY_* variable with a typed value, set to garbage, stops
// `config check` and `serve` with exit 2, naming the variable and the field.
func TestEnvOverrideErrorExitsTwoNamingTheVariable(t *testing.T) {
	t.Setenv("MULTIPROXY_CONFIG", "")
	typed := 0
	for _, o := range config.EnvOverrides() {
		var kind reflect.Kind
		for _, k := range config.Keys() {
			if k.Path == o.Key {
				kind = k.Type.Kind()
			}
		}
		if kind == reflect.Invalid {
			t.Fatalf("%s sets %s, which is not a config key", o.Env, o.Key)
		}
		if kind == reflect.String {
			continue
		}
		typed++
		t.Run(o.Env, func(t *testing.T) {
			t.Setenv(o.Env, "banana")
			for _, cmd := range [][]string{{"config", "check"}, {"serve"}} {
				_, stderr, code := run(t, cmd...)
				if code != 2 || !strings.Contains(stderr, o.Env) || !strings.Contains(stderr, o.Key+":") {
					t.Errorf("%v with %s=banana: exit %d, %q; want exit 2 naming %s and %s", cmd, o.Env, code, stderr, o.Env, o.Key)
				}
			}
		})
	}
	if typed == 0 {
		t.Fatal("no typed MULTIPROXY_* variable found; the test checks nothing")
	}

	// The config file itself, when it comes from MULTIPROXY_CONFIG.
	t.Setenv("MULTIPROXY_CONFIG", filepath.Join(t.TempDir(), "missing.yaml"))
	if _, stderr, code := run(t, "config", "check"); code != 2 || !strings.Contains(stderr, "MULTIPROXY_CONFIG") {
		t.Errorf("missing file from MULTIPROXY_CONFIG: exit %d, %q", code, stderr)
	}
}

// A config file without upstreams is an error saying where the defaults
// are; no config file at all serves the built-in default.
func TestConfigWithoutUpstreams(t *testing.T) {
	t.Setenv("MULTIPROXY_CONFIG", "")
	file := writeFile(t, t.TempDir(), "c.yaml", "log_level: debug\n")
	for _, cmd := range [][]string{{"config", "check"}, {"serve"}} {
		_, stderr, code := run(t, append(cmd, "--config", file)...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", cmd, code)
		}
		for _, want := range []string{"upstreams: no upstreams configured", "configs/multiproxy.yaml", "without --config"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("%v: error %q lacks %q", cmd, stderr, want)
			}
		}
	}
	out, stderr, code := run(t, "config", "check")
	if code != 0 || out != "config ok: 5 upstreams\n" {
		t.Errorf("no config file: exit %d, %q %q; want the built-in five", code, out, stderr)
	}
}

func TestYAMLErrorNamesItsLine(t *testing.T) {
	file := writeFile(t, t.TempDir(), "c.yaml", "upstreams:\n  - name: a.io\n   listen: ':5000'\n")
	_, stderr, code := run(t, "config", "check", "--config", file)
	if code != 2 || !strings.Contains(stderr, "c.yaml: line 3, column 4: ") {
		t.Errorf("exit %d, %q; want exit 2 and line 3", code, stderr)
	}
}
