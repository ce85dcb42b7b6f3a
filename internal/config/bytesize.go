package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var byteUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// ParseByteSize reads "1048576", "512MiB" or "20GB".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	num, factor := s, int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, factor = strings.TrimSpace(rest), u.factor
			break
		}
	}
	bad := fmt.Errorf("invalid size %q: want bytes or a number with a unit such as \"512MiB\"", s)
	// A size has no sign; without this "-0" and "-1e-400" would read as 0.
	if strings.HasPrefix(num, "-") {
		return 0, bad
	}
	// Whole numbers are read exactly: through a float64 a count above 2^53,
	// which a YAML integer can hold and `config print` then writes as a
	// string, would load back rounded.
	if n, err := strconv.ParseUint(num, 10, 64); err == nil {
		if n > math.MaxInt64/uint64(factor) {
			return 0, bad
		}
		return ByteSize(n * uint64(factor)), nil
	}
	n, err := strconv.ParseFloat(num, 64)
	// !(n >= 0) also refuses NaN; the upper bound refuses Inf and sizes
	// that would overflow int64.
	if err != nil || !(n >= 0) || n*float64(factor) >= math.MaxInt64 {
		return 0, bad
	}
	return ByteSize(n * float64(factor)), nil
}

// String prints the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for i := 3; i >= 0; i-- {
		u := byteUnits[i]
		if b >= ByteSize(u.factor) && int64(b)%u.factor == 0 {
			return strconv.FormatInt(int64(b)/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML prints sizes readably in `config print`; 0 (off) as a plain
// number rather than the string "0".
func (b ByteSize) MarshalYAML() (any, error) {
	if b == 0 {
		return 0, nil
	}
	return b.String(), nil
}
