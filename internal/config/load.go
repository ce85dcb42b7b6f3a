package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// LoadOptions says where Load takes the configuration from.
type LoadOptions struct {
	// File is a YAML config file; "" means the built-in defaults only.
	File string
	// Env is the environment in os.Environ() form; nil means os.Environ().
	// It supplies both the MULTIPROXY_* overrides and password_env values.
	Env []string
	// Flags, if not nil, supplies command-line overrides; only flags the
	// user actually set take effect.
	Flags *pflag.FlagSet
}

// envOverrides maps environment variables to the config keys they set.
// Only scalar keys are overridable: a list of upstreams does not fit in a
// variable, and per-upstream variables would make the list order an API.
var envOverrides = []struct{ env, key string }{
	{"MULTIPROXY_DATA_DIR", "data_dir"},
	{"MULTIPROXY_LOG_LEVEL", "log_level"},
	{"MULTIPROXY_SHUTDOWN_TIMEOUT", "shutdown_timeout"},
	{"MULTIPROXY_ADMIN_LISTEN", "admin.listen"},
	{"MULTIPROXY_ADMIN_TOKEN_FILE", "admin.token_file"},
}

// flagOverrides maps command-line flags to the config keys they set.
var flagOverrides = []struct{ flag, key string }{
	{"data-dir", "data_dir"},
	{"admin-listen", "admin.listen"},
	{"log-level", "log_level"},
}

// Load builds the effective configuration: the built-in defaults, then the
// file, then MULTIPROXY_* variables, then flags, each overriding the last.
// It then reads the secrets and validates the result.
//
// Without a file the five built-in upstreams serve. A file must list its
// own upstreams, which replace the built-in ones entirely: a file without an
// upstreams key (or with a bare `upstreams:`) is an error saying where the
// default table is, since quietly serving five public registries from a
// file that meant to configure something else would surprise. Relative
// paths are taken from the working directory. Unknown keys are errors, so a
// typo cannot silently fall back to a default.
//
// Errors about the content are *ValidationError values, joined when there is
// more than one; a value that came from a MULTIPROXY_* variable or a flag
// names it as its Source. A file that is not valid YAML is a *SyntaxError
// (wrapped) with the line and column of the problem; other errors reading
// the file are neither.
func Load(opts LoadOptions) (Config, error) {
	env := opts.Env
	if env == nil {
		env = os.Environ()
	}
	vars := envMap(env)

	cfg := Default()
	// The built-in upstreams' storage was derived from the built-in
	// data_dir; clear it so applyDefaults derives it from the final one.
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Storage.Path = ""
	}

	v := viper.NewWithOptions(viper.WithDecoderRegistry(yamlDecoder{}))
	var errs []error
	noUpstreams := false
	if opts.File != "" {
		v.SetConfigFile(opts.File)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			// Drop viper's "While parsing config:"; the SyntaxError
			// says what and where.
			var pe viper.ConfigParseError
			if errors.As(err, &pe) && pe.Unwrap() != nil {
				err = pe.Unwrap()
			}
			return Config{}, fmt.Errorf("read config %s: %w", opts.File, err)
		}
		errs = append(errs, unknownKeys("", v.AllSettings(), reflect.TypeFor[Config]())...)

		// Decoding fills only the keys present, so each upstream from the
		// file starts from the defaults: an absent timeout keeps the
		// default while an explicit `timeout: 0s` stays zero for
		// explicitZeros to catch. A fresh slice also keeps the file's list
		// from being merged into the built-in one.
		switch list := v.Get("upstreams").(type) {
		case nil:
			noUpstreams = true
			cfg.Upstreams = nil
		case []any:
			cfg.Upstreams = make([]Upstream, len(list))
			for i := range cfg.Upstreams {
				cfg.Upstreams[i] = defaultUpstream()
			}
		}
	}

	// viper.Set outranks everything else, so set flags after the
	// environment to give them the last word. Reading opts.Env by hand
	// rather than viper.AutomaticEnv keeps the process environment out of
	// tests. sources remembers which key came from where, for the errors.
	sources := map[string]string{}
	for _, o := range envOverrides {
		if val := vars[o.env]; val != "" {
			v.Set(o.key, val)
			sources[o.key] = o.env
		}
	}
	if opts.Flags != nil {
		for _, o := range flagOverrides {
			if f := opts.Flags.Lookup(o.flag); f != nil && f.Changed {
				v.Set(o.key, f.Value.String())
				sources[o.key] = "--" + o.flag
			}
		}
	}

	if err := v.Unmarshal(&cfg, strictDecoding); err != nil {
		errs = append(errs, decodeErrors(err)...)
	}
	// A file without upstreams gets its own error, said first since it is
	// likely the one thing to fix, in place of validate's "at least one
	// upstream is required". The rest is still checked, so that one run
	// reports everything.
	var first error
	if noUpstreams {
		first = fieldErr("upstreams", "%s", noUpstreamsMsg)
	}
	if len(errs) > 0 {
		return Config{}, withSources(errors.Join(append([]error{first}, errs...)...), sources)
	}

	errs = explicitZeros(cfg)
	cfg.applyDefaults()
	errs = append(errs, cfg.loadSecrets(vars)...)
	errs = append(errs, cfg.validate(!noUpstreams)...)
	if err := errors.Join(append([]error{first}, errs...)...); err != nil {
		return Config{}, withSources(err, sources)
	}
	return cfg, nil
}

// noUpstreamsMsg is the error for a config file without upstreams.
const noUpstreamsMsg = "no upstreams configured; copy the default table from configs/multiproxy.yaml, " +
	"or run without --config to use the built-in default"

// withSources marks each *ValidationError in err whose field was set by a
// variable or a flag with that source, so that the message names what the
// user has to change.
func withSources(err error, sources map[string]string) error {
	if len(sources) == 0 {
		return err
	}
	var walk func(error)
	walk = func(e error) {
		if ve, ok := e.(*ValidationError); ok {
			if src := sources[ve.Field]; src != "" && ve.Source == "" {
				ve.Source = src
			}
			return
		}
		if multi, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range multi.Unwrap() {
				walk(inner)
			}
			return
		}
		if inner := errors.Unwrap(e); inner != nil {
			walk(inner)
		}
	}
	walk(err)
	return err
}

// explicitZeros reports durations that must be positive but were set to
// zero. Every duration starts from its default before decoding, so a zero
// here was written by the user; applyDefaults would silently replace it.
func explicitZeros(c Config) []error {
	var errs []error
	if c.ShutdownTimeout == 0 {
		errs = append(errs, fieldErr("shutdown_timeout", "must be positive, got 0s"))
	}
	for i, u := range c.Upstreams {
		if u.Timeout == 0 {
			errs = append(errs, fieldErr(fmt.Sprintf("upstreams[%d].timeout", i), "must be positive, got 0s"))
		}
		if u.FillTimeout == 0 {
			errs = append(errs, fieldErr(fmt.Sprintf("upstreams[%d].fill_timeout", i), "must be positive, got 0s"))
		}
	}
	return errs
}

// envMap turns os.Environ()-style pairs into a map. Later entries win, as
// with exec.Cmd.Env, so callers can append overrides to os.Environ().
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// strictDecoding replaces viper's lenient defaults: with weak typing, a
// `listen: 5000` would quietly become "5000" and a bare `timeout: 3` would
// mean three nanoseconds.
func strictDecoding(dc *mapstructure.DecoderConfig) {
	dc.WeaklyTypedInput = false
	dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(durationHook, byteSizeHook, minFreeHook, storagePathHook)
}

var durationType = reflect.TypeFor[time.Duration]()

// durationHook accepts Go duration strings ("3s", "30m") for duration
// fields. Bare numbers are rejected, except 0, which means the same in
// every unit.
func durationHook(_, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch d := data.(type) {
	case string:
		parsed, err := time.ParseDuration(d)
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q: want a Go duration such as \"3s\" or \"30m\"", d)
		}
		return parsed, nil
	case int:
		if d == 0 {
			return time.Duration(0), nil
		}
	}
	return nil, fmt.Errorf("invalid duration %v: want a Go duration such as \"3s\" or \"30m\"", data)
}

var upstreamStorageType = reflect.TypeFor[UpstreamStorage]()

// storagePathHook keeps `storage: /srv/cache` meaning the upstream's
// directory, as it did before storage became a section.
func storagePathHook(_, to reflect.Type, data any) (any, error) {
	if to != upstreamStorageType {
		return data, nil
	}
	if p, ok := data.(string); ok {
		return UpstreamStorage{Path: p}, nil
	}
	return data, nil
}

var byteSizeType = reflect.TypeFor[ByteSize]()

// byteSizeHook accepts whole numbers of bytes and strings with a unit.
func byteSizeHook(_, to reflect.Type, data any) (any, error) {
	if to != byteSizeType {
		return data, nil
	}
	switch d := data.(type) {
	case int:
		if d >= 0 {
			return ByteSize(d), nil
		}
	case string:
		return ParseByteSize(d)
	}
	return nil, fmt.Errorf("invalid size %v: want bytes or a number with a unit such as \"512MiB\"", data)
}

// decodeErrors turns mapstructure's errors, which carry the field path, into
// ValidationErrors.
func decodeErrors(err error) []error {
	if de, ok := err.(*mapstructure.DecodeError); ok && de.Name() != "" {
		return []error{&ValidationError{Field: de.Name(), Msg: de.Unwrap().Error(), err: de.Unwrap()}}
	}
	// Several errors come joined under a "decoding failed" prefix that adds
	// nothing once each carries its own field.
	var multi interface{ Unwrap() []error }
	if errors.As(err, &multi) {
		var out []error
		for _, inner := range multi.Unwrap() {
			out = append(out, decodeErrors(inner)...)
		}
		return out
	}
	return []error{fmt.Errorf("decode config: %w", err)}
}

// unknownKeys walks the decoded file against the struct it will fill and
// reports every key that no field takes, with its full path. mapstructure's
// ErrorUnused would catch these too, but names only the enclosing struct.
func unknownKeys(path string, val any, t reflect.Type) []error {
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		m, ok := val.(map[string]any)
		if !ok {
			return nil // the wrong shape; decoding reports it
		}
		for _, key := range slices.Sorted(maps.Keys(m)) {
			p := key
			if path != "" {
				p = path + "." + key
			}
			f, ok := fieldFor(t, key)
			if !ok {
				errs = append(errs, &ValidationError{Field: p, Msg: unknownKeyMsg(t, key)})
				continue
			}
			errs = append(errs, unknownKeys(p, m[key], f.Type)...)
		}
	case reflect.Slice:
		list, ok := val.([]any)
		if !ok {
			return nil
		}
		for i, elem := range list {
			errs = append(errs, unknownKeys(fmt.Sprintf("%s[%d]", path, i), elem, t.Elem())...)
		}
	}
	return errs
}

// fieldFor finds the field that decoding would fill from key, matching
// case-insensitively as mapstructure does.
func fieldFor(t reflect.Type, key string) (reflect.StructField, bool) {
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if strings.EqualFold(name, key) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// secretSources says where each secret comes from instead, for the error on
// a secret written straight into the file.
var secretSources = map[string]string{
	"password": "password_file or password_env",
	"token":    "token_file",
}

func unknownKeyMsg(t reflect.Type, key string) string {
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.Type == reflect.TypeFor[Secret]() && strings.EqualFold(name, key) && secretSources[name] != "" {
			return fmt.Sprintf("unknown key: secrets are never read from the config file, use %s", secretSources[name])
		}
	}
	return "unknown key"
}

// loadSecrets reads each password and the admin token from where the config
// points. Errors name the field and the file or variable, never the content.
func (c *Config) loadSecrets(vars map[string]string) []error {
	var errs []error
	errs = append(errs, c.loadStorageSecrets()...)
	if c.Admin.TokenFile != "" {
		tok, err := readSecretFile("admin.token_file", c.Admin.TokenFile)
		if err != nil {
			errs = append(errs, err)
		}
		c.Admin.Token = tok
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		field := func(name string) string { return fmt.Sprintf("upstreams[%d].%s", i, name) }
		switch {
		case u.PasswordFile != "" && u.PasswordEnv != "":
			// Ambiguous; Validate reports it.
		case u.PasswordFile != "":
			pw, err := readSecretFile(field("password_file"), u.PasswordFile)
			if err != nil {
				errs = append(errs, err)
			}
			u.Password = pw
		case u.PasswordEnv != "":
			pw, ok := vars[u.PasswordEnv]
			switch {
			case !ok:
				errs = append(errs, fieldErr(field("password_env"), "variable %s is not set", u.PasswordEnv))
			case pw == "":
				errs = append(errs, fieldErr(field("password_env"), "variable %s is empty", u.PasswordEnv))
			}
			u.Password = Secret(pw)
		}
	}
	return errs
}

// readSecretFile reads a one-line secret. The trailing newline that editors
// and `echo` add is not part of it.
func readSecretFile(field, path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		// *fs.PathError names the path and the reason, not the content.
		return "", &ValidationError{Field: field, Msg: err.Error(), err: err}
	}
	s := strings.TrimRightFunc(string(b), unicode.IsSpace)
	if s == "" {
		return "", fieldErr(field, "%s is empty", path)
	}
	return Secret(s), nil
}
