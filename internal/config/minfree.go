package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/multiproxy/multiproxy/internal/disk"
)

// Disk configures how the cache treats the filesystem it stores on. The
// top-level disk key applies to every upstream that does not set its own.
type Disk struct {
	// MinFree is the low watermark fills leave free on the filesystem
	// holding the storage. Unset: disk.DefaultMinFree.
	MinFree MinFree `mapstructure:"min_free" yaml:"min_free"`
}

// MinFree is a low watermark as written in the config: a percentage of the
// filesystem ("5%", "2.5%") or a size ("1GiB", "500MB", "1073741824"). The
// zero value means unset, which is disk.DefaultMinFree: 5% or 1 GiB,
// whichever is smaller.
type MinFree struct {
	// Percent is in (0, 100), or 0 when Bytes is set or neither is.
	Percent float64 `mapstructure:"-" yaml:"-"`
	// Bytes is positive, or 0 when Percent is set or neither is.
	Bytes ByteSize `mapstructure:"-" yaml:"-"`
}

// minFreeDefault is how an unset MinFree prints. ParseMinFree reads it
// back (and plain "default"), so `config print` output loads again.
const minFreeDefault = "default (5% or 1GiB, whichever is smaller)"

const minFreeWant = `want a percentage such as "5%" or a size such as "1GiB"`

// ParseMinFree reads "5%", "2.5%", "1GiB", "500MB" or "1073741824".
// "default" is the unset value.
func ParseMinFree(s string) (MinFree, error) {
	s = strings.TrimSpace(s)
	if s == "default" || s == minFreeDefault {
		return MinFree{}, nil
	}
	if num, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil {
			return MinFree{}, fmt.Errorf("invalid value %q: %s", s, minFreeWant)
		}
		if !(p > 0 && p < 100) {
			return MinFree{}, fmt.Errorf("percentage %q out of range: want more than 0%% and less than 100%%", s)
		}
		return MinFree{Percent: p}, nil
	}
	b, err := ParseByteSize(s)
	if err != nil {
		return MinFree{}, fmt.Errorf("invalid value %q: %s", s, minFreeWant)
	}
	if b <= 0 {
		return MinFree{}, fmt.Errorf("must be more than 0 bytes, got %q (leave it unset for the default)", s)
	}
	return MinFree{Bytes: b}, nil
}

// IsZero reports an unset watermark.
func (m MinFree) IsZero() bool { return m.Percent == 0 && m.Bytes == 0 }

// String is the value as a config file would write it, or a description of
// the default when unset.
func (m MinFree) String() string {
	switch {
	case m.Percent != 0:
		return strconv.FormatFloat(m.Percent, 'f', -1, 64) + "%"
	case m.Bytes != 0:
		return m.Bytes.String()
	}
	return minFreeDefault
}

// MarshalYAML prints the effective value in `config print`.
func (m MinFree) MarshalYAML() (any, error) { return m.String(), nil }

// Disk is the watermark internal/disk applies.
func (m MinFree) Disk() disk.MinFree {
	return disk.MinFree{Percent: m.Percent, Bytes: int64(m.Bytes)}
}

// check says what is wrong with a MinFree built in code, or "".
func (m MinFree) check() string {
	switch {
	case math.IsNaN(m.Percent) || m.Percent < 0 || m.Percent >= 100:
		return fmt.Sprintf("percentage %v out of range: want more than 0%% and less than 100%%", m.Percent)
	case m.Bytes < 0:
		return fmt.Sprintf("must be more than 0 bytes, got %d", int64(m.Bytes))
	case m.Percent != 0 && m.Bytes != 0:
		return "set either a percentage or a size, not both"
	}
	return ""
}

// MinFree is the upstream's effective low watermark: its own disk.min_free,
// else the top-level one (Load and Default resolve that into Disk.MinFree),
// else disk.DefaultMinFree.
func (u Upstream) MinFree() disk.MinFree { return u.Disk.MinFree.Disk() }

var minFreeType = reflect.TypeFor[MinFree]()

// minFreeHook decodes min_free from a string ("5%", "1GiB") or a whole
// number of bytes.
func minFreeHook(_, to reflect.Type, data any) (any, error) {
	if to != minFreeType {
		return data, nil
	}
	switch d := data.(type) {
	case string:
		return ParseMinFree(d)
	case int:
		if d > 0 {
			return MinFree{Bytes: ByteSize(d)}, nil
		}
		return nil, fmt.Errorf("must be more than 0 bytes, got %d (leave it unset for the default)", d)
	case float64:
		return nil, fmt.Errorf("invalid value %v: a bare number is a whole number of bytes; write \"%v%%\" for a percentage", d, d)
	}
	return nil, fmt.Errorf("invalid value %v: %s", data, minFreeWant)
}
