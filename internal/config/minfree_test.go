package config_test

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/disk"
)

func TestParseMinFree(t *testing.T) {
	good := map[string]config.MinFree{
		"5%":                      {Percent: 5},
		"2.5%":                    {Percent: 2.5},
		" 0.01 % ":                {Percent: 0.01},
		"99.9%":                   {Percent: 99.9},
		"1GiB":                    {Bytes: 1 << 30},
		"500MB":                   {Bytes: 500e6},
		"1073741824":              {Bytes: 1 << 30},
		"1.5GiB":                  {Bytes: 3 << 29},
		"default":                 {},
		config.MinFree{}.String(): {}, // what config print writes for unset
	}
	for in, want := range good {
		got, err := config.ParseMinFree(in)
		if err != nil || got != want {
			t.Errorf("ParseMinFree(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0%", "100%", "150%", "-5%", "NaN%", "%", "five%", "0", "0GiB", "-1GiB", "lots", "NaN", "Inf", "1e30GiB", "default (10%)"} {
		if got, err := config.ParseMinFree(bad); err == nil {
			t.Errorf("ParseMinFree(%q) accepted as %+v", bad, got)
		}
	}
}

func TestMinFreeString(t *testing.T) {
	for m, want := range map[config.MinFree]string{
		{Percent: 5}:     "5%",
		{Percent: 2.5}:   "2.5%",
		{Bytes: 1 << 30}: "1GiB",
		{Bytes: 500e6}:   "500000000",
		{}:               "default (5% or 1GiB, whichever is smaller)",
	} {
		if got := m.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", m, got, want)
		}
		back, err := config.ParseMinFree(m.String())
		if err != nil || back != m {
			t.Errorf("%q reads back as %+v, %v", m.String(), back, err)
		}
	}
}

func TestMinFreeResolvesPerUpstream(t *testing.T) {
	const ups = `
upstreams:
  - {name: a.io, listen: ":5000", remote: "https://a.io"%s}
  - {name: b.io, listen: ":5001", remote: "https://b.io"%s}
`
	own := func(v string) string { return ", disk: {min_free: " + v + "}" }
	tests := []struct {
		name   string
		global string // top-level disk key, "" for none
		a, b   string // upstreams' own disk key, "" for none
		wantA  disk.MinFree
		wantB  disk.MinFree
	}{
		{name: "unset everywhere is the default", wantA: disk.MinFree{}, wantB: disk.MinFree{}},
		{name: "global percentage", global: "5%", wantA: disk.MinFree{Percent: 5}, wantB: disk.MinFree{Percent: 5}},
		{name: "global bytes", global: "2GiB", wantA: disk.MinFree{Bytes: 2 << 30}, wantB: disk.MinFree{Bytes: 2 << 30}},
		{name: "global bare number", global: "1073741824", wantA: disk.MinFree{Bytes: 1 << 30}, wantB: disk.MinFree{Bytes: 1 << 30}},
		{name: "upstream overrides global", global: "5%", b: own("500MB"),
			wantA: disk.MinFree{Percent: 5}, wantB: disk.MinFree{Bytes: 500e6}},
		{name: "upstream only", a: own("2.5%"), wantA: disk.MinFree{Percent: 2.5}, wantB: disk.MinFree{}},
		{name: "upstream says default", global: "10%", a: own("default"),
			wantA: disk.MinFree{Percent: 10}, wantB: disk.MinFree{Percent: 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			yaml := strings.Replace(strings.Replace(ups, "%s", tc.a, 1), "%s", tc.b, 1)
			if tc.global != "" {
				yaml = "disk:\n  min_free: " + tc.global + "\n" + yaml
			}
			cfg, err := config.Load(config.LoadOptions{File: writeConfig(t, t.TempDir(), yaml), Env: noEnv})
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Upstreams[0].MinFree(); got != tc.wantA {
				t.Errorf("a.io MinFree() = %+v, want %+v", got, tc.wantA)
			}
			if got := cfg.Upstreams[1].MinFree(); got != tc.wantB {
				t.Errorf("b.io MinFree() = %+v, want %+v", got, tc.wantB)
			}
		})
	}
}

func TestMinFreeGlobalReachesBuiltInUpstreams(t *testing.T) {
	// The default table, with a top-level watermark added.
	table, err := os.ReadFile("../../configs/multiproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := writeConfig(t, t.TempDir(), "disk: {min_free: 3%}\n"+string(table))
	cfg, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 5 {
		t.Fatalf("%d upstreams, want the 5 built-in ones", len(cfg.Upstreams))
	}
	for _, u := range cfg.Upstreams {
		if got := u.MinFree(); got != (disk.MinFree{Percent: 3}) {
			t.Errorf("%s: MinFree() = %+v", u.Name, got)
		}
	}
	if got := config.Default().Upstreams[0].MinFree(); got != (disk.MinFree{}) {
		t.Errorf("built-in default MinFree() = %+v, want unset", got)
	}
}

func TestMinFreeInvalid(t *testing.T) {
	const two = `
upstreams:
  - {name: a.io, listen: ":5000", remote: "https://a.io"}
  - {name: b.io, listen: ":5001", remote: "https://b.io"}
  - {name: c.io, listen: ":5002", remote: "https://c.io", disk: {min_free: %s}}
`
	tests := []struct {
		name  string
		yaml  string
		field string
		msg   string
	}{
		{"global zero percent", "disk: {min_free: 0%}\n", "disk.min_free", "out of range"},
		{"global 100 percent", "disk: {min_free: 100%}\n", "disk.min_free", "out of range"},
		{"global negative percent", "disk: {min_free: -1%}\n", "disk.min_free", "out of range"},
		{"global word", "disk: {min_free: plenty}\n", "disk.min_free", `invalid value "plenty"`},
		{"global zero bytes", "disk: {min_free: 0}\n", "disk.min_free", "more than 0 bytes"},
		{"global zero with unit", "disk: {min_free: 0GiB}\n", "disk.min_free", "more than 0 bytes"},
		{"global negative bytes", "disk: {min_free: -1}\n", "disk.min_free", "more than 0 bytes"},
		{"global bare fraction", "disk: {min_free: 5.5}\n", "disk.min_free", `write "5.5%" for a percentage`},
		{"global list", "disk: {min_free: [5%]}\n", "disk.min_free", "want a percentage"},
		{"upstream percent", strings.Replace(two, "%s", "250%", 1), "upstreams[2].disk.min_free", "out of range"},
		{"upstream unit typo", strings.Replace(two, "%s", "1GB5", 1), "upstreams[2].disk.min_free", `invalid value "1GB5"`},
		{"upstream zero", strings.Replace(two, "%s", "0", 1), "upstreams[2].disk.min_free", "more than 0 bytes"},
		{"unknown disk key", "disk: {min_fre: 5%}\n", "disk.min_fre", "unknown key"},
		{"unknown upstream disk key", strings.Replace(two, "%s", "5%, max_free: 1", 1), "upstreams[2].disk.max_free", "unknown key"},
		{"disk not a map", "disk: 5%\n", "disk", "expected a map"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Load(config.LoadOptions{File: writeConfig(t, t.TempDir(), tc.yaml), Env: noEnv})
			requireFieldError(t, err, tc.field, tc.msg)
			if cfg.Upstreams != nil {
				t.Errorf("Load returned a config along with an error")
			}
		})
	}
}

func TestMinFreeValidateBuiltInCode(t *testing.T) {
	cfg := config.Default()
	cfg.Disk.MinFree = config.MinFree{Percent: 100}
	cfg.Upstreams[1].Disk.MinFree = config.MinFree{Bytes: -1}
	cfg.Upstreams[2].Disk.MinFree = config.MinFree{Percent: 5, Bytes: 1 << 30}
	err := cfg.Validate()
	requireFieldError(t, err, "disk.min_free", "out of range")
	requireFieldError(t, err, "upstreams[1].disk.min_free", "more than 0 bytes")
	requireFieldError(t, err, "upstreams[2].disk.min_free", "not both")

	// An upstream that inherited the top-level value is not reported again.
	cfg = config.Default()
	cfg.Disk.MinFree = config.MinFree{Percent: 100}
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Disk.MinFree = cfg.Disk.MinFree
	}
	if n := strings.Count(cfg.Validate().Error(), "min_free"); n != 1 {
		t.Errorf("an inherited bad value is reported %d times, want once:\n%v", n, cfg.Validate())
	}
}

func TestMinFreePrinted(t *testing.T) {
	var out bytes.Buffer
	if err := config.Default().WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	if want := "disk:\n  min_free: default (5% or 1GiB, whichever is smaller)\n"; !strings.Contains(out.String(), want) {
		t.Errorf("config print of the defaults lacks %q:\n%s", want, out.String())
	}

	file := writeConfig(t, t.TempDir(), `
disk: {min_free: 2.5%}
upstreams:
  - {name: a.io, listen: ":5000", remote: "https://a.io"}
  - {name: b.io, listen: ":5001", remote: "https://b.io", disk: {min_free: 20GiB}}
`)
	cfg, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := cfg.WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	y := out.String()
	// The top level, then each upstream's effective value.
	if strings.Count(y, "min_free: 2.5%") != 2 || strings.Count(y, "min_free: 20GiB") != 1 {
		t.Errorf("config print does not show each effective min_free:\n%s", y)
	}
	// What config print writes loads back to the same watermarks.
	again, err := config.Load(config.LoadOptions{File: writeFile(t, t.TempDir(), "printed.yaml", y), Env: noEnv})
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, y)
	}
	for i, u := range again.Upstreams {
		if u.MinFree() != cfg.Upstreams[i].MinFree() {
			t.Errorf("%s: %+v after a round trip, was %+v", u.Name, u.MinFree(), cfg.Upstreams[i].MinFree())
		}
	}
}
