package config_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/multiproxy/multiproxy/internal/config"
)

// noEnv keeps the process environment out of a Load; nil would mean
// os.Environ().
var noEnv = []string{}

// writeFile writes content to name under dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeConfig writes a YAML config into dir, replacing {{dir}} with dir so
// configs can point at files the test created.
func writeConfig(t *testing.T, dir, yaml string) string {
	t.Helper()
	return writeFile(t, dir, "multiproxy.yaml", strings.ReplaceAll(yaml, "{{dir}}", dir))
}

// validationErrors flattens a (possibly joined) error into its
// *ValidationError leaves.
func validationErrors(err error) []*config.ValidationError {
	var out []*config.ValidationError
	var walk func(error)
	walk = func(err error) {
		if ve, ok := err.(*config.ValidationError); ok {
			out = append(out, ve)
			return
		}
		if multi, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range multi.Unwrap() {
				walk(e)
			}
			return
		}
		if inner := errors.Unwrap(err); inner != nil {
			walk(inner)
		}
	}
	walk(err)
	return out
}

// requireFieldError fails unless err holds a *ValidationError for field
// whose message contains msg.
func requireFieldError(t *testing.T, err error, field, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one for %s", field)
	}
	var first *config.ValidationError
	if !errors.As(err, &first) {
		t.Fatalf("errors.As(*ValidationError) failed on %v", err)
	}
	for _, ve := range validationErrors(err) {
		if ve.Field == field && strings.Contains(ve.Msg, msg) {
			if !strings.Contains(err.Error(), field+": ") {
				t.Fatalf("error text %q does not name %s", err, field)
			}
			return
		}
	}
	t.Fatalf("no error for field %s containing %q in:\n%v", field, msg, err)
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, listen, remote string }{
		{"docker.io", ":5000", "https://registry-1.docker.io"},
		{"ghcr.io", ":5010", "https://ghcr.io"},
		{"quay.io", ":5020", "https://quay.io"},
		{"registry.k8s.io", ":5030", "https://registry.k8s.io"},
		{"reg.kyverno.io", ":5040", "https://reg.kyverno.io"},
	}
	if len(cfg.Upstreams) != len(want) {
		t.Fatalf("got %d upstreams, want %d", len(cfg.Upstreams), len(want))
	}
	for i, w := range want {
		u := cfg.Upstreams[i]
		if u.Name != w.name || u.Listen != w.listen || u.Remote != w.remote {
			t.Errorf("upstreams[%d] = %s %s %s, want %s %s %s", i, u.Name, u.Listen, u.Remote, w.name, w.listen, w.remote)
		}
		if want := filepath.Join("./data", w.name); u.Storage.Path != want {
			t.Errorf("upstreams[%d].storage = %q, want %q", i, u.Storage.Path, want)
		}
		if u.Timeout != 3*time.Second {
			t.Errorf("upstreams[%d].timeout = %s, want 3s", i, u.Timeout)
		}
		if u.FillTimeout != config.DefaultFillTimeout || u.TagFreshness != 0 {
			t.Errorf("upstreams[%d]: fill_timeout %s tag_freshness %s", i, u.FillTimeout, u.TagFreshness)
		}
	}
	if cfg.DataDir != "./data" || cfg.LogLevel != "info" || cfg.Admin.Listen != config.DefaultAdminListen ||
		cfg.ShutdownTimeout != config.DefaultDrain {
		t.Errorf("top level = %+v", cfg)
	}
	if err := config.Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}

// A file must list its upstreams: one without them is an error that says
// where the default table is, and everything else in it is still checked.
// Without a file the built-in upstreams serve (TestLoadDefaults).
func TestLoadFileWithoutUpstreams(t *testing.T) {
	for name, yaml := range map[string]string{
		"no key":          "data_dir: {{dir}}/store\nlog_level: debug\n",
		"bare key":        "log_level: debug\nupstreams:\n",
		"null":            "upstreams: null\n",
		"empty file":      "",
		"only a comment":  "# nothing yet\n",
		"other key wrong": "log_level: verbose\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := config.Load(config.LoadOptions{File: writeConfig(t, dir, yaml), Env: noEnv})
			requireFieldError(t, err, "upstreams", "no upstreams configured; copy the default table from configs/multiproxy.yaml")
			if !strings.Contains(err.Error(), "run without --config to use the built-in default") {
				t.Errorf("error does not say how to get the built-in default: %v", err)
			}
			if strings.Contains(err.Error(), "at least one upstream") {
				t.Errorf("error repeats itself: %v", err)
			}
			if strings.Contains(yaml, "verbose") {
				requireFieldError(t, err, "log_level", `unknown level "verbose"`)
			}
		})
	}
}

// The shipped default table is a complete config: the five built-in
// upstreams.
func TestShippedConfigIsTheDefault(t *testing.T) {
	cfg, err := config.Load(config.LoadOptions{File: "../../configs/multiproxy.yaml", Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprintf("%#v", cfg), fmt.Sprintf("%#v", config.Default()); got != want {
		t.Errorf("configs/multiproxy.yaml loads as\n%s\nwant the built-in default\n%s", got, want)
	}
}

func TestLoadFileUpstreamsReplaceDefaults(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, `
upstreams:
  - name: registry.example.com:8443
    listen: 127.0.0.1:6000
    remote: https://registry.example.com:8443/
    tag_freshness: 5m
`)
	cfg, err := config.Load(config.LoadOptions{File: path, Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 1 {
		t.Fatalf("got %d upstreams, want 1", len(cfg.Upstreams))
	}
	u, ok := cfg.Upstream("Registry.Example.com:8443")
	if !ok {
		t.Fatal("Upstream lookup failed")
	}
	if u.Timeout != config.DefaultTimeout || u.FillTimeout != config.DefaultFillTimeout || u.TagFreshness != 5*time.Minute {
		t.Errorf("durations = %s %s %s", u.Timeout, u.FillTimeout, u.TagFreshness)
	}
	if _, ok := cfg.Upstream("docker.io"); ok {
		t.Error("default upstream docker.io survived an explicit upstreams list")
	}
}

func TestLoadInvalid(t *testing.T) {
	const secret = "hunter2-in-the-url"
	tests := []struct {
		name  string
		yaml  string
		env   []string
		field string
		msg   string
	}{
		{
			name:  "unknown top-level key",
			yaml:  "lgo_level: info\n",
			field: "lgo_level", msg: "unknown key",
		},
		{
			name:  "tls cert without key",
			yaml:  "tls: {cert_file: /etc/x.crt}\nupstreams:\n  - {name: docker.io, listen: \":5000\", remote: \"https://registry-1.docker.io\"}\n",
			field: "tls", msg: "set both cert_file and key_file",
		},
		{
			name:  "upstream tls that does not load",
			yaml:  "upstreams:\n  - {name: docker.io, listen: \":5000\", remote: \"https://registry-1.docker.io\", tls: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}}\n",
			field: "upstreams[0].tls", msg: "cannot load the certificate",
		},
		{
			name:  "unknown admin key",
			yaml:  "admin:\n  listen: 127.0.0.1:9090\n  tokn_file: /x\n",
			field: "admin.tokn_file", msg: "unknown key",
		},
		{
			name: "unknown upstream key",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io"}
  - {name: ghcr.io, listen: ":5010", remote: "https://ghcr.io", username: u, passwrd: x}
`,
			field: "upstreams[1].passwrd", msg: "unknown key",
		},
		{
			name: "password in the file",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", password: x}
`,
			field: "upstreams[0].password", msg: "password_file or password_env",
		},
		{
			name: "duplicate name",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io"}
  - {name: ghcr.io, listen: ":5010", remote: "https://ghcr.io", storage: "{{dir}}/a"}
  - {name: quay.io, listen: ":5020", remote: "https://quay.io"}
  - {name: GHCR.io, listen: ":5030", remote: "https://ghcr.io", storage: "{{dir}}/b"}
`,
			field: "upstreams[3].name", msg: `duplicate name "GHCR.io" (also upstreams[1])`,
		},
		{
			name: "name with a path",
			yaml: `
upstreams:
  - {name: "../etc", listen: ":5000", remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].name", msg: "not a registry host name",
		},
		{
			name: "missing name",
			yaml: `
upstreams:
  - {listen: ":5000", remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].name", msg: "required",
		},
		{
			name: "duplicate port",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io"}
  - {name: ghcr.io, listen: "127.0.0.1:5000", remote: "https://ghcr.io"}
`,
			field: "upstreams[1].listen", msg: "port 5000 already used by upstreams[0]",
		},
		{
			name: "port taken by admin",
			yaml: `
admin: {listen: ":5000"}
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].listen", msg: "port 5000 already used by admin.listen",
		},
		{
			name: "listen without port",
			yaml: `
upstreams:
  - {name: docker.io, listen: "5000", remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].listen", msg: "invalid address",
		},
		{
			name: "listen port out of range",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":70000", remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].listen", msg: "invalid port",
		},
		{
			name: "listen as a number",
			yaml: `
upstreams:
  - {name: docker.io, listen: 5000, remote: "https://registry-1.docker.io"}
`,
			field: "upstreams[0].listen", msg: "expected type 'string'",
		},
		{
			name: "remote without scheme",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "registry-1.docker.io"}
`,
			field: "upstreams[0].remote", msg: "no scheme",
		},
		{
			name: "remote with ftp scheme",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "ftp://registry-1.docker.io"}
`,
			field: "upstreams[0].remote", msg: `unsupported scheme "ftp"`,
		},
		{
			name: "remote with path",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io/v2/"}
`,
			field: "upstreams[0].remote", msg: `must not have a path, got "/v2/"`,
		},
		{
			name: "remote with query",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io?x=1"}
`,
			field: "upstreams[0].remote", msg: "must not have a query",
		},
		{
			name: "remote with credentials",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://bob:` + secret + `@registry-1.docker.io"}
`,
			field: "upstreams[0].remote", msg: "must not contain credentials",
		},
		{
			name: "allow_hops entry that is no network",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", allow_hops: [10.0.0.0/8, "10.0.0.0/33"]}
`,
			field: "upstreams[0].allow_hops[1]", msg: `want a CIDR such as 10.0.0.0/8 or an address, got "10.0.0.0/33"`,
		},
		{
			name: "unreadable password_file",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob, password_file: "{{dir}}/nope"}
`,
			field: "upstreams[0].password_file", msg: "/nope: no such file",
		},
		{
			name: "empty password_file",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob, password_file: "{{dir}}/empty"}
`,
			field: "upstreams[0].password_file", msg: "empty",
		},
		{
			name: "unset password_env",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob, password_env: REG_PASS}
`,
			field: "upstreams[0].password_env", msg: "REG_PASS is not set",
		},
		{
			name: "empty password_env",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob, password_env: REG_PASS}
`,
			env:   []string{"REG_PASS="},
			field: "upstreams[0].password_env", msg: "REG_PASS is empty",
		},
		{
			name: "password_file and password_env",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob,
     password_file: "{{dir}}/pw", password_env: REG_PASS}
`,
			env:   []string{"REG_PASS=x"},
			field: "upstreams[0].password_file", msg: "mutually exclusive with password_env",
		},
		{
			name: "password_file without username",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", password_file: "{{dir}}/pw"}
`,
			field: "upstreams[0].username", msg: "required when password_file is set",
		},
		{
			name: "unreadable ca_file",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", ca_file: "{{dir}}/nope.pem"}
`,
			field: "upstreams[0].ca_file", msg: "nope.pem: no such file",
		},
		{
			name: "ca_file without certificates",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", ca_file: "{{dir}}/pw"}
`,
			field: "upstreams[0].ca_file", msg: "no PEM certificates",
		},
		{
			name: "negative tag_freshness",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", tag_freshness: -1s}
`,
			field: "upstreams[0].tag_freshness", msg: "must not be negative",
		},
		{
			name: "zero timeout",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", timeout: 0s}
`,
			field: "upstreams[0].timeout", msg: "must be positive",
		},
		{
			name: "zero fill_timeout as bare 0",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", fill_timeout: 0}
`,
			field: "upstreams[0].fill_timeout", msg: "must be positive",
		},
		{
			name: "timeout without unit",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", timeout: 3}
`,
			field: "upstreams[0].timeout", msg: "invalid duration 3",
		},
		{
			name: "timeout garbage",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", timeout: soon}
`,
			field: "upstreams[0].timeout", msg: `invalid duration "soon"`,
		},
		{
			name:  "zero shutdown_timeout",
			yaml:  "shutdown_timeout: 0s\n",
			field: "shutdown_timeout", msg: "must be positive",
		},
		{
			name:  "bad log level",
			yaml:  "log_level: verbose\n",
			field: "log_level", msg: `unknown level "verbose"`,
		},
		{
			name:  "bad log level from env",
			env:   []string{"MULTIPROXY_LOG_LEVEL=loud"},
			field: "log_level", msg: `unknown level "loud"`,
		},
		{
			name:  "invalid admin listen",
			yaml:  "admin:\n  listen: localhost\n",
			field: "admin.listen", msg: "invalid address",
		},
		{
			name:  "unreadable peer_token_file",
			yaml:  "coordination:\n  redis: {addr: '127.0.0.1:6379'}\n  peer_token_file: {{dir}}/peer-token\n",
			field: "coordination.peer_token_file", msg: "/peer-token: no such file",
		},
		{
			name:  "empty peer_token_file",
			yaml:  "coordination:\n  redis: {addr: '127.0.0.1:6379'}\n  peer_token_file: {{dir}}/empty\n",
			field: "coordination.peer_token_file", msg: "empty",
		},
		{
			name:  "unreadable admin token_file",
			yaml:  "admin:\n  token_file: {{dir}}/token\n",
			field: "admin.token_file", msg: "/token: no such file",
		},
		{
			name: "shared storage",
			yaml: `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", storage: "{{dir}}/s"}
  - {name: ghcr.io, listen: ":5010", remote: "https://ghcr.io", storage: "{{dir}}/x/../s/"}
`,
			field: "upstreams[1].storage", msg: "already used by upstreams[0]",
		},
		{
			name: "nested storage",
			yaml: `
data_dir: "{{dir}}"
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", storage: "{{dir}}/ghcr.io/docker"}
  - {name: ghcr.io, listen: ":5010", remote: "https://ghcr.io"}
`,
			field: "upstreams[0].storage", msg: "is inside upstreams[1].storage",
		},
		{
			name:  "empty upstream list",
			yaml:  "upstreams: []\n",
			field: "upstreams", msg: "at least one upstream",
		},
		{
			name:  "upstreams not a list",
			yaml:  "upstreams:\n  name: docker.io\n",
			field: "upstreams", msg: "must be an array or slice",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "pw", "not a certificate\n")
			writeFile(t, dir, "empty", "\n")
			opts := config.LoadOptions{Env: noEnv}
			if tc.env != nil {
				opts.Env = tc.env
			}
			if tc.yaml != "" {
				opts.File = writeConfig(t, dir, tc.yaml)
			}
			cfg, err := config.Load(opts)
			requireFieldError(t, err, tc.field, tc.msg)
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error leaks a credential: %v", err)
			}
			if cfg.Upstreams != nil {
				t.Errorf("Load returned a config along with an error: %+v", cfg)
			}
		})
	}
}

func TestLoadUnreadableFileWrapsCause(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, `
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io", username: bob, password_file: "{{dir}}/nope"}
`)
	_, err := config.Load(config.LoadOptions{File: path, Env: noEnv})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(err, fs.ErrNotExist) = false for %v", err)
	}

	_, err = config.Load(config.LoadOptions{File: filepath.Join(dir, "missing.yaml"), Env: noEnv})
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing config file: got %v", err)
	}
}

func TestLoadEnvAndFlagOverrides(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "override")
	tokenFile := writeFile(t, dir, "token", "admin-token\n")
	path := writeConfig(t, dir, `
data_dir: {{dir}}/from-file
log_level: warn
upstreams:
  - {name: docker.io, listen: ":5000", remote: "https://registry-1.docker.io"}
  - {name: ghcr.io, listen: ":5010", remote: "https://ghcr.io", storage: "{{dir}}/pinned"}
`)

	cfg, err := config.Load(config.LoadOptions{
		File: path,
		Env: []string{
			"MULTIPROXY_DATA_DIR=" + dataDir,
			"MULTIPROXY_SHUTDOWN_TIMEOUT=5s",
			"MULTIPROXY_ADMIN_LISTEN=127.0.0.1:9191",
			"MULTIPROXY_ADMIN_TOKEN_FILE=" + tokenFile,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != dataDir {
		t.Errorf("data_dir = %q, want %q", cfg.DataDir, dataDir)
	}
	if want := filepath.Join(dataDir, "docker.io"); cfg.Upstreams[0].Storage.Path != want {
		t.Errorf("derived storage = %q, want %q", cfg.Upstreams[0].Storage.Path, want)
	}
	if want := filepath.Join(dir, "pinned"); cfg.Upstreams[1].Storage.Path != want {
		t.Errorf("explicit storage = %q, want %q", cfg.Upstreams[1].Storage.Path, want)
	}
	if cfg.ShutdownTimeout != 5*time.Second || cfg.Admin.Listen != "127.0.0.1:9191" || cfg.LogLevel != "warn" {
		t.Errorf("overrides not applied: %+v", cfg)
	}
	if cfg.Admin.Token.Reveal() != "admin-token" {
		t.Errorf("admin token = %q", cfg.Admin.Token.Reveal())
	}

	// Without a file, the override applies to the built-in upstreams too.
	cfg, err = config.Load(config.LoadOptions{Env: []string{"MULTIPROXY_DATA_DIR=" + dataDir}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range cfg.Upstreams {
		if want := filepath.Join(dataDir, u.Name); u.Storage.Path != want {
			t.Errorf("%s storage = %q, want %q", u.Name, u.Storage.Path, want)
		}
	}

	// Flags beat the environment, and unset flags change nothing.
	flags := pflag.NewFlagSet("test", pflag.ContinueOnError)
	flags.String("data-dir", "", "")
	flags.String("admin-listen", "", "")
	flags.String("log-level", "", "")
	if err := flags.Parse([]string{"--data-dir", filepath.Join(dir, "flag"), "--log-level", "error"}); err != nil {
		t.Fatal(err)
	}
	cfg, err = config.Load(config.LoadOptions{
		Env:   []string{"MULTIPROXY_DATA_DIR=" + dataDir, "MULTIPROXY_LOG_LEVEL=debug"},
		Flags: flags,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "flag", "ghcr.io"); cfg.Upstreams[1].Storage.Path != want {
		t.Errorf("storage with --data-dir = %q, want %q", cfg.Upstreams[1].Storage.Path, want)
	}
	if cfg.LogLevel != "error" || cfg.Admin.Listen != config.DefaultAdminListen {
		t.Errorf("flags: log_level %q admin.listen %q", cfg.LogLevel, cfg.Admin.Listen)
	}
}

// selfSignedPEM returns a freshly generated self-signed CA certificate.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "multiproxy test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// secret is distinctive enough that finding it anywhere means a leak.
const secret = "Zq9-pass-word-XYZZY-7731"

// loadFull loads a complete config with every optional field set.
func loadFull(t *testing.T) config.Config {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "password", secret+"\n")
	writeFile(t, dir, "token", "tok-"+secret+"\n")
	writeFile(t, dir, "ca.pem", string(selfSignedPEM(t)))
	path := writeConfig(t, dir, `
data_dir: {{dir}}/data
shutdown_timeout: 10s
log_level: debug
admin:
  listen: 127.0.0.1:9999
  token_file: {{dir}}/token
upstreams:
  - name: registry.internal:5443
    listen: 0.0.0.0:5100
    remote: https://registry.internal:5443
    username: robot
    password_file: {{dir}}/password
    ca_file: {{dir}}/ca.pem
    timeout: 5s
    fill_timeout: 1h
    tag_freshness: 2m
  - name: docker.io
    listen: ":5000"
    remote: https://registry-1.docker.io
    username: robot2
    password_env: DOCKER_PASS
`)
	cfg, err := config.Load(config.LoadOptions{File: path, Env: []string{"DOCKER_PASS=env-" + secret}})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestLoadFull(t *testing.T) {
	cfg := loadFull(t)
	u := cfg.Upstreams[0]
	if got := u.Password.Reveal(); got != secret {
		t.Errorf("password = %q, want %q", got, secret)
	}
	if got := cfg.Upstreams[1].Password.Reveal(); got != "env-"+secret {
		t.Errorf("password from env = %q", got)
	}
	if u.Username != "robot" || u.Timeout != 5*time.Second || u.FillTimeout != time.Hour || u.TagFreshness != 2*time.Minute {
		t.Errorf("upstream = %+v", u)
	}
	if want := filepath.Join(cfg.DataDir, "registry.internal:5443"); u.Storage.Path != want {
		t.Errorf("storage = %q, want %q", u.Storage.Path, want)
	}
	if cfg.ShutdownTimeout != 10*time.Second || cfg.LogLevel != "debug" || cfg.Admin.Listen != "127.0.0.1:9999" {
		t.Errorf("top level = %+v", cfg)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	cfg := loadFull(t)

	var yamlOut bytes.Buffer
	if err := cfg.WriteYAML(&yamlOut); err != nil {
		t.Fatal(err)
	}
	var jsonLog, textLog bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&jsonLog, nil), slog.NewTextHandler(&textLog, nil)} {
		log := slog.New(h)
		log.Info("loaded", "config", cfg)
		log.Info("upstream", "upstream", cfg.Upstreams[0], slog.Any("password", cfg.Upstreams[0].Password))
		log.Info("admin", "admin", cfg.Admin)
	}

	outputs := map[string]string{
		"WriteYAML":   yamlOut.String(),
		"%v":          fmt.Sprintf("%v", cfg),
		"%+v":         fmt.Sprintf("%+v", cfg),
		"%#v":         fmt.Sprintf("%#v", cfg),
		"upstream %v": fmt.Sprintf("%v %+v %#v %s", cfg.Upstreams[0], cfg.Upstreams[0], cfg.Upstreams[0], cfg.Upstreams[0].Password),
		"slog JSON":   jsonLog.String(),
		"slog text":   textLog.String(),
	}
	for name, out := range outputs {
		if strings.Contains(out, secret) {
			t.Errorf("%s leaks the secret:\n%s", name, out)
		}
		if !strings.Contains(out, "<redacted>") {
			t.Errorf("%s shows no <redacted> marker:\n%s", name, out)
		}
	}

	y := yamlOut.String()
	for _, want := range []string{"timeout: 5s", "fill_timeout: 1h0m0s", "tag_freshness: 2m0s", "password: <redacted>", "token: <redacted>"} {
		if !strings.Contains(y, want) {
			t.Errorf("WriteYAML output lacks %q:\n%s", want, y)
		}
	}
}

func TestWriteYAMLRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := config.Default().WriteYAML(&buf); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "password") || strings.Contains(buf.String(), "token") {
		t.Errorf("secret lines printed with no secret set:\n%s", buf.String())
	}
	path := writeFile(t, t.TempDir(), "printed.yaml", buf.String())
	cfg, err := config.Load(config.LoadOptions{File: path, Env: noEnv})
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, buf.String())
	}
	if got, want := fmt.Sprintf("%#v", cfg), fmt.Sprintf("%#v", config.Default()); got != want {
		t.Errorf("round trip changed the config:\ngot  %s\nwant %s", got, want)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	dir := t.TempDir()
	good := config.Default()
	good.Upstreams = append(good.Upstreams, config.Upstream{
		Name: "reg.local", Listen: "[::1]:6000", Remote: "http://reg.local:8080",
		Storage: config.UpstreamStorage{Path: filepath.Join(dir, "reg.local")}, Timeout: time.Second, FillTimeout: time.Minute,
		Username: "anon", // a username without a password is allowed
	})
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}

	// A Config built in code does not go through Load, so Validate must
	// read ca_file itself.
	bad := config.Default()
	bad.Upstreams[2].CAFile = filepath.Join(dir, "missing.pem")
	bad.Upstreams[3].Timeout = 0
	err := bad.Validate()
	requireFieldError(t, err, "upstreams[2].ca_file", "missing.pem")
	requireFieldError(t, err, "upstreams[3].timeout", "must be positive")

	err = config.Config{}.Validate()
	requireFieldError(t, err, "upstreams", "at least one upstream")
	requireFieldError(t, err, "admin.listen", "required")
	requireFieldError(t, err, "log_level", "unknown level")
}

func TestValidationErrorFormat(t *testing.T) {
	e := &config.ValidationError{Field: "upstreams[1].passwrd", Msg: "unknown key"}
	if got, want := e.Error(), "upstreams[1].passwrd: unknown key"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestByteSizes(t *testing.T) {
	for in, want := range map[string]config.ByteSize{"1048576": 1 << 20, "512MiB": 512 << 20, "20GB": 20e9, "1.5GiB": 3 << 29, "0": 0,
		// Whole numbers are exact up to the largest size there is.
		"9007199254740993": 1<<53 + 1, "9223372036854775807": math.MaxInt64, "8388607TiB": 8388607 << 40,
	} {
		got, err := config.ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "-0", "-1e-400", "12XB", "MiB", "NaN", "Inf", "1e30GiB", "9223372036854775808", "8388608TiB"} {
		if _, err := config.ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", bad)
		}
	}
	if s := config.ByteSize(512 << 20).String(); s != "512MiB" {
		t.Errorf("String() = %q", s)
	}
}

func TestRecycleAndEvictionKeys(t *testing.T) {
	dir := t.TempDir()
	file := writeConfig(t, dir, `recycle:
  interval: 30m
  max_memory: 512MiB
upstreams:
  - name: docker.io
    listen: ":5000"
    remote: https://registry-1.docker.io
    max_size: 20GiB
    max_unused: 720h
    gc:
      schedule: "0 3 * * 0"
`)
	cfg, err := config.Load(config.LoadOptions{File: file, Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Recycle.Interval != 30*time.Minute || cfg.Recycle.MaxMemory != 512<<20 {
		t.Errorf("recycle = %+v", cfg.Recycle)
	}
	u := cfg.Upstreams[0]
	if u.MaxSize != 20<<30 || u.MaxUnused != 720*time.Hour || u.GC.Schedule != "0 3 * * 0" {
		t.Errorf("upstream eviction = %v %v %q", u.MaxSize, u.MaxUnused, u.GC.Schedule)
	}
	bad := writeConfig(t, dir, "recycle:\n  max_memory: lots\n")
	if _, err := config.Load(config.LoadOptions{File: bad, Env: []string{}}); err == nil || !strings.Contains(err.Error(), "recycle.max_memory") {
		t.Errorf("bad max_memory: %v", err)
	}
}

func TestBadGCSchedule(t *testing.T) {
	file := writeConfig(t, t.TempDir(), "upstreams:\n  - {name: a.io, listen: ':5000', remote: 'https://a.io', gc: {schedule: 'every tuesday'}}\n")
	_, err := config.Load(config.LoadOptions{File: file, Env: []string{}})
	if err == nil || !strings.Contains(err.Error(), "upstreams[0].gc.schedule") {
		t.Fatalf("bad schedule: %v", err)
	}
}

// allow_hops takes CIDRs and bare addresses, the latter as one-address
// networks, and what Validate refused is never in the policy.
func TestHopPrefixes(t *testing.T) {
	u := config.Upstream{AllowHops: []string{"10.20.0.0/16", "192.168.1.7", "::1", "fd00::1/8"}}
	var got []string
	for _, p := range u.HopPrefixes() {
		got = append(got, p.String())
	}
	want := []string{"10.20.0.0/16", "192.168.1.7/32", "::1/128", "fd00::/8"}
	if !slices.Equal(got, want) {
		t.Errorf("HopPrefixes() = %v, want %v", got, want)
	}
	if p := (config.Upstream{}).HopPrefixes(); p != nil {
		t.Errorf("HopPrefixes() without allow_hops = %v, want nil (the default policy)", p)
	}
}
