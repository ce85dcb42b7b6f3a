package config_test

import (
	"bytes"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// wholeSize is a size written as a whole number with an optional unit,
// which must parse exactly: no float rounding, no overflow.
var wholeSize = regexp.MustCompile(`^\s*(\d+)\s*(KiB|MiB|GiB|TiB|KB|MB|GB|TB|B)?\s*$`)

var unitFactor = map[string]int64{
	"": 1, "B": 1,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

// checkPrinted fails unless b reads back as itself from both the forms
// `config print` can write it in.
func checkPrinted(t *testing.T, b config.ByteSize) {
	t.Helper()
	if back, err := config.ParseByteSize(b.String()); err != nil || back != b {
		t.Fatalf("%d prints as %q, which reads back as %d, %v", int64(b), b.String(), int64(back), err)
	}
	y, err := b.MarshalYAML()
	if err != nil {
		t.Fatal(err)
	}
	switch y := y.(type) {
	case int:
		if int64(y) != int64(b) {
			t.Fatalf("%d marshals as %d", int64(b), y)
		}
	case string:
		if back, err := config.ParseByteSize(y); err != nil || back != b {
			t.Fatalf("%d marshals as %q, which reads back as %d, %v", int64(b), y, int64(back), err)
		}
	default:
		t.Fatalf("%d marshals as %T", int64(b), y)
	}
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{
		"0", "1", "1048576", "512MiB", "20GB", " 1.5 GiB ", "1KB", "1e3", "0x10",
		"-1", "-0", "-1e-400", "+5", "NaN", "Inf", "-Inf", "1e30GiB", "KiB", "", "lots",
		"9007199254740993", "9223372036854775807", "9223372036854775808", "8388607TiB", "8388608TiB",
		"9223372036854775.807KB", "0.5B", "1.0000001KiB",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := config.ParseByteSize(s)
		if strings.HasPrefix(strings.TrimSpace(s), "-") && err == nil {
			t.Fatalf("ParseByteSize(%q) = %d: a size is never negative", s, int64(b))
		}
		if m := wholeSize.FindStringSubmatch(s); m != nil {
			exact, _ := new(big.Int).SetString(m[1], 10)
			exact.Mul(exact, big.NewInt(unitFactor[m[2]]))
			switch {
			case !exact.IsInt64() && err == nil:
				t.Fatalf("ParseByteSize(%q) = %d: %s bytes overflows", s, int64(b), exact)
			case exact.IsInt64() && (err != nil || int64(b) != exact.Int64()):
				t.Fatalf("ParseByteSize(%q) = %d, %v; want %s", s, int64(b), err, exact)
			}
		}
		if err != nil {
			return
		}
		if b < 0 {
			t.Fatalf("ParseByteSize(%q) = %d", s, int64(b))
		}
		checkPrinted(t, b)
	})
}

// FuzzByteSizeString starts from the value: every size a config can hold
// (max_size: 9007199254740993 decodes as a YAML integer) prints as text
// that loads back to it.
func FuzzByteSizeString(f *testing.F) {
	for _, n := range []int64{0, 1, 1023, 1024, 1536, 1 << 30, 500e6, 1<<53 + 1, math.MaxInt64, math.MaxInt64 - 1023} {
		f.Add(n)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		if n < 0 {
			n = -(n + 1)
		}
		checkPrinted(t, config.ByteSize(n))
	})
}

func FuzzParseMinFree(f *testing.F) {
	for _, s := range []string{
		"5%", "2.5%", " 0.01 % ", "99.9%", "1GiB", "500MB", "1073741824", "1.5GiB", "default",
		config.MinFree{}.String(), "", "0%", "100%", "-5%", "-0%", "NaN%", "%", "0", "-1GiB",
		"1e-320%", "99.99999999999999999%", "5%%", "0.5B", "9007199254740993",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := config.ParseMinFree(s)
		if err != nil {
			return
		}
		if strings.HasPrefix(strings.TrimSpace(s), "-") {
			t.Fatalf("ParseMinFree(%q) = %+v: a watermark is never negative", s, m)
		}
		switch {
		case m.IsZero():
		case m.Bytes == 0:
			if !(m.Percent > 0 && m.Percent < 100) || !strings.HasSuffix(strings.TrimSpace(s), "%") {
				t.Fatalf("ParseMinFree(%q) = %+v", s, m)
			}
		case m.Percent == 0:
			if m.Bytes <= 0 || strings.HasSuffix(strings.TrimSpace(s), "%") {
				t.Fatalf("ParseMinFree(%q) = %+v", s, m)
			}
		default:
			t.Fatalf("ParseMinFree(%q) = %+v sets both", s, m)
		}
		if back, err := config.ParseMinFree(m.String()); err != nil || back != m {
			t.Fatalf("ParseMinFree(%q) = %+v prints as %q, which reads back as %+v, %v", s, m, m.String(), back, err)
		}
		if y, err := m.MarshalYAML(); err != nil || y != m.String() {
			t.Fatalf("%+v marshals as %v, %v", m, y, err)
		}
	})
}

// FuzzLoadSizesAndDurations writes each value as it would appear in a
// config file, so the decode hooks see whatever YAML makes of it (a
// string, an int, a float, a map), and checks what Load lets through:
// only values the service can use, printed by `config print` in a form
// that loads back to the same.
func FuzzLoadSizesAndDurations(f *testing.F) {
	for _, s := range [][4]string{
		{"3s", "0s", "0", "default"},
		{"30m", "1h30m", "20GiB", "5%"},
		{"0", "-1s", "-1", "-5%"},
		{"3", "1.5", "1e3", "1073741824"},
		{"2562047h47m16.854775807s", "2562048h", "9223372036854775807", "9223372036854775808"},
		{"3s", "300ms", "9007199254740993", "1.5GiB"},
		{"-3s", "-1h", "1KiB", "50%"},
		{"'3s'", "{a: b}", "[1]", "~"},
		{"1ns", "-0s", "0.5B", "0%"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	dir := f.TempDir()
	file := filepath.Join(dir, "multiproxy.yaml")
	printed := filepath.Join(dir, "printed.yaml")
	f.Fuzz(func(t *testing.T, timeout, freshness, maxSize, minFree string) {
		if strings.ContainsAny(timeout+freshness+maxSize+minFree, "\r\n") {
			return // one value per line: a newline would be another key
		}
		yaml := "upstreams:\n  - name: a.io\n    listen: \":5000\"\n    remote: https://a.io\n" +
			"    timeout: " + timeout + "\n    tag_freshness: " + freshness + "\n" +
			"    max_size: " + maxSize + "\n    disk:\n      min_free: " + minFree + "\n"
		if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(config.LoadOptions{File: file, Env: noEnv})
		if err != nil {
			return
		}
		u := cfg.Upstreams[0]
		if u.Timeout <= 0 || u.TagFreshness < 0 || u.MaxSize < 0 || u.Disk.MinFree.Bytes < 0 ||
			u.Disk.MinFree.Percent < 0 || u.Disk.MinFree.Percent >= 100 {
			t.Fatalf("loaded timeout %v, tag_freshness %v, max_size %d, min_free %+v from\n%s",
				u.Timeout, u.TagFreshness, int64(u.MaxSize), u.Disk.MinFree, yaml)
		}
		// A value that reads as a Go duration means that duration.
		if d, err := time.ParseDuration(timeout); err == nil && d != u.Timeout {
			t.Fatalf("timeout: %s loaded as %v", timeout, u.Timeout)
		}
		if d, err := time.ParseDuration(freshness); err == nil && d != u.TagFreshness {
			t.Fatalf("tag_freshness: %s loaded as %v", freshness, u.TagFreshness)
		}
		if n, err := strconv.ParseInt(maxSize, 10, 64); err == nil && n != int64(u.MaxSize) {
			t.Fatalf("max_size: %s loaded as %d", maxSize, int64(u.MaxSize))
		}

		var out bytes.Buffer
		if err := cfg.WriteYAML(&out); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(printed, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := config.Load(config.LoadOptions{File: printed, Env: noEnv})
		if err != nil {
			t.Fatalf("config print of\n%s\ndoes not load: %v\n%s", yaml, err, out.String())
		}
		v := again.Upstreams[0]
		if v.Timeout != u.Timeout || v.TagFreshness != u.TagFreshness || v.MaxSize != u.MaxSize || v.Disk.MinFree != u.Disk.MinFree {
			t.Fatalf("config print of\n%s\nloads as %v %v %d %+v, was %v %v %d %+v", yaml,
				v.Timeout, v.TagFreshness, int64(v.MaxSize), v.Disk.MinFree,
				u.Timeout, u.TagFreshness, int64(u.MaxSize), u.Disk.MinFree)
		}
	})
}
