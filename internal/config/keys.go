package config

import (
	"reflect"
	"strings"
)

// Key is one configuration key as a config file writes it.
type Key struct {
	// Path is the key's full name: "shutdown_timeout", "admin.listen",
	// "upstreams[].gc.schedule".
	Path string
	// Type is the Go type the value decodes into.
	Type reflect.Type
}

// Keys lists every key a config file may set, in struct order. Documentation
// and tests check themselves against it.
func Keys() []Key { return keysOf("", reflect.TypeFor[Config]()) }

func keysOf(prefix string, t reflect.Type) []Key {
	var out []Key
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		path := prefix + name
		switch ft := f.Type; {
		case ft.Kind() == reflect.Struct && hasKeys(ft):
			out = append(out, keysOf(path+".", ft)...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && hasKeys(ft.Elem()):
			out = append(out, keysOf(path+"[].", ft.Elem())...)
		default:
			// A scalar, a list of scalars, or a struct decoded whole
			// from one value (MinFree).
			out = append(out, Key{Path: path, Type: ft})
		}
	}
	return out
}

// hasKeys reports whether a struct is a section of keys rather than one
// value decoded by a hook.
func hasKeys(t reflect.Type) bool {
	for f := range t.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ","); name != "-" && f.IsExported() {
			return true
		}
	}
	return false
}

// EnvOverride is one MULTIPROXY_* variable and the key it sets.
type EnvOverride struct{ Env, Key string }

// EnvOverrides lists the environment variables Load reads, besides
// MULTIPROXY_CONFIG (which names the file).
func EnvOverrides() []EnvOverride {
	out := make([]EnvOverride, len(envOverrides))
	for i, o := range envOverrides {
		out[i] = EnvOverride{Env: o.env, Key: o.key}
	}
	return out
}
