package config_test

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/multiproxy/multiproxy/internal/config"
)

// A YAML syntax error is reported at the line where it is. yaml/v3, which
// viper uses, said "line 1", "line 2" and "line 6" for the first three: the
// 0-based line of the enclosing block, or one short.
func TestYAMLSyntaxErrorLine(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		line int
		msg  string
	}{
		{
			name: "line 3",
			yaml: "upstreams:\n" +
				"  - name: docker.io\n" +
				"   listen: \":5000\"\n", // one space short
			line: 3, msg: "did not find expected '-' indicator",
		},
		{
			name: "line 7",
			yaml: "data_dir: ./data\n" +
				"upstreams:\n" +
				"  - name: docker.io\n" +
				"    listen: \":5000\"\n" +
				"    remote: https://registry-1.docker.io\n" +
				"  - name: ghcr.io\n" +
				"   listen: \":5010\"\n", // one space short
			line: 7, msg: "did not find expected '-' indicator",
		},
		{
			name: "line 7 scanner",
			yaml: "data_dir: ./data\n" +
				"upstreams:\n" +
				"  - name: docker.io\n" +
				"    listen: \":5000\"\n" +
				"    remote: https://registry-1.docker.io\n" +
				"  - name: ghcr.io\n" +
				"    listen: @5010\n", // @ cannot start a plain scalar
			line: 7, msg: "cannot start any token",
		},
		{
			name: "line 7 tab",
			yaml: "data_dir: ./data\n" +
				"log_level: info\n" +
				"\n" +
				"# upstreams\n" +
				"upstreams:\n" +
				"  - name: docker.io\n" +
				"\tlisten: \":5000\"\n",
			line: 7, msg: "tab character",
		},
		{
			// yaml/v4 reads 010 as YAML 1.1's octal 8: max_size would be
			// 8 bytes where ten was written (found by FuzzLoadSizesAndDurations).
			name: "leading zero",
			yaml: "upstreams:\n" +
				"  - name: docker.io\n" +
				"    listen: \":5000\"\n" +
				"    max_size: 010\n",
			line: 4, msg: "010 has a leading zero, which YAML reads as an octal number: write 10, or 0o10",
		},
		{
			name: "leading zero in a list",
			yaml: "upstreams:\n" +
				"  - name: docker.io\n" +
				"    listen: \":5000\"\n" +
				"    allow_hops: [10.0.0.0/8]\n" +
				"    pins: [-007]\n",
			line: 5, msg: "-007 has a leading zero, which YAML reads as an octal number: write -7, or 0o7",
		},
		{
			name: "duplicate key",
			yaml: "log_level: info\nupstreams: []\nlog_level: debug\n",
			line: 3, msg: `mapping key "log_level" already defined at line 1`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := writeConfig(t, t.TempDir(), tc.yaml)
			_, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
			var se *config.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("got %v (%T), want a *config.SyntaxError", err, err)
			}
			if se.Line != tc.line || !strings.Contains(se.Msg, tc.msg) {
				t.Errorf("got line %d %q, want line %d %q", se.Line, se.Msg, tc.line, tc.msg)
			}
			want := regexp.MustCompile(fmt.Sprintf(`^read config .*multiproxy\.yaml: line %d, column \d+: `, tc.line))
			if !want.MatchString(err.Error()) {
				t.Errorf("error text %q does not start with the file and line %d", err, tc.line)
			}
			if strings.Contains(err.Error(), "While parsing config") {
				t.Errorf("error text keeps viper's prefix: %q", err)
			}
		})
	}
}

// keyType is the Go type of a config key.
func keyType(t *testing.T, key string) reflect.Type {
	t.Helper()
	for _, k := range config.Keys() {
		if k.Path == key {
			return k.Type
		}
	}
	t.Fatalf("no config key %q", key)
	return nil
}

// Every MULTIPROXY_* variable that takes a typed value (not a plain
// string) names itself, and the field, when its value does not parse.
func TestEnvOverrideErrorNamesTheVariable(t *testing.T) {
	typed := 0
	for _, o := range config.EnvOverrides() {
		if keyType(t, o.Key).Kind() == reflect.String {
			continue
		}
		typed++
		t.Run(o.Env, func(t *testing.T) {
			_, err := config.Load(config.LoadOptions{Env: []string{o.Env + "=banana"}})
			requireFieldError(t, err, o.Key, "banana")
			for _, ve := range validationErrors(err) {
				if ve.Field == o.Key && ve.Source != o.Env {
					t.Errorf("Source = %q, want %q", ve.Source, o.Env)
				}
			}
			if !strings.Contains(err.Error(), o.Env) {
				t.Errorf("error %q does not name %s", err, o.Env)
			}
		})
	}
	if typed == 0 {
		t.Fatal("no typed MULTIPROXY_* variable found; the test checks nothing")
	}

	// Values that parse but do not validate name their source too, and
	// values from the file do not claim one.
	dir := t.TempDir()
	file := writeConfig(t, dir, "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io'}\nshutdown_timeout: 0s\n")
	_, err := config.Load(config.LoadOptions{File: file, Env: []string{
		"MULTIPROXY_LOG_LEVEL=loud",
		"MULTIPROXY_ADMIN_LISTEN=nowhere",
		"MULTIPROXY_ADMIN_TOKEN_FILE=" + dir + "/missing-token",
	}})
	for field, source := range map[string]string{
		"log_level":        "MULTIPROXY_LOG_LEVEL",
		"admin.listen":     "MULTIPROXY_ADMIN_LISTEN",
		"admin.token_file": "MULTIPROXY_ADMIN_TOKEN_FILE",
		"shutdown_timeout": "",
	} {
		i := slices.IndexFunc(validationErrors(err), func(ve *config.ValidationError) bool { return ve.Field == field })
		if i < 0 {
			t.Errorf("no error for %s in %v", field, err)
			continue
		}
		if ve := validationErrors(err)[i]; ve.Source != source {
			t.Errorf("%s: Source = %q, want %q", field, ve.Source, source)
		}
	}
	if !strings.Contains(err.Error(), `log_level: unknown level "loud" (want one of debug, info, warn, error) (from MULTIPROXY_LOG_LEVEL)`) {
		t.Errorf("error text: %v", err)
	}

	// A flag outranks the variable, and is named instead.
	flags := pflag.NewFlagSet("test", pflag.ContinueOnError)
	flags.String("log-level", "", "")
	if err := flags.Parse([]string{"--log-level", "shout"}); err != nil {
		t.Fatal(err)
	}
	_, err = config.Load(config.LoadOptions{Env: []string{"MULTIPROXY_LOG_LEVEL=loud"}, Flags: flags})
	requireFieldError(t, err, "log_level", `"shout"`)
	if !strings.Contains(err.Error(), "(from --log-level)") {
		t.Errorf("error does not name the flag: %v", err)
	}
}

// The README's key table lists every key a config file may set, and no key
// that does not exist.
func TestREADMEListsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// Rows of the key table: "| `upstreams[].timeout` | `3s` | ...". The
	// first cell may name several keys ("`a` / `b`").
	row := regexp.MustCompile("(?m)^\\| (`[^|]*`) \\|")
	name := regexp.MustCompile("`([a-z0-9_.\\[\\]]+)`")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		for _, n := range name.FindAllStringSubmatch(m[1], -1) {
			documented[n[1]] = true
		}
	}
	keys := map[string]bool{}
	for _, k := range config.Keys() {
		keys[k.Path] = true
		if !documented[k.Path] {
			t.Errorf("README.md's key table has no row for `%s` (| `%s` | default | meaning |)", k.Path, k.Path)
		}
	}
	for d := range documented {
		// Other tables (admin paths, test profiles) start with `/…`
		// or a profile name; only dotted keys and known top-level
		// names are config keys.
		if !keys[d] && (strings.ContainsAny(d, ".[") || keys[strings.SplitN(d, ".", 2)[0]]) {
			t.Errorf("README.md documents `%s`, which is not a config key", d)
		}
	}

	// Every environment override is mentioned.
	for _, o := range config.EnvOverrides() {
		if !strings.Contains(string(readme), "`"+o.Env+"`") {
			t.Errorf("README.md does not mention %s", o.Env)
		}
	}
}

func TestKeys(t *testing.T) {
	var paths []string
	for _, k := range config.Keys() {
		paths = append(paths, k.Path)
	}
	for _, want := range []string{"data_dir", "admin.listen", "recycle.max_memory", "disk.min_free",
		"upstreams[].aliases", "upstreams[].gc.schedule", "upstreams[].disk.min_free"} {
		if !slices.Contains(paths, want) {
			t.Errorf("Keys() lacks %s: %v", want, paths)
		}
	}
	for _, never := range []string{"admin.token", "upstreams[].password", "disk.min_free.percent"} {
		if slices.Contains(paths, never) {
			t.Errorf("Keys() lists %s, which no file may set", never)
		}
	}
}
