package containerd

import (
	"fmt"
	"strings"
)

// Version is a containerd release line, as far as hosts.toml and
// config.toml differ between them.
type Version string

// The release lines we generate for. 1.6 and 1.7 read hosts.toml the same
// way; they are separate values so users can name what they run.
const (
	V16 Version = "1.6"
	V17 Version = "1.7"
	V2  Version = "2.x"
)

// DefaultVersion is what `containerd hosts` targets unless told otherwise.
const DefaultVersion = V17

// ParseVersion accepts a release line ("1.6", "1.7", "2.x") or a full
// version as `containerd --version` prints it ("v1.6.20", "2.1.4").
func ParseVersion(s string) (Version, error) {
	v := strings.TrimPrefix(strings.TrimSpace(s), "v")
	switch {
	case v == "1.6" || strings.HasPrefix(v, "1.6."):
		return V16, nil
	case v == "1.7" || strings.HasPrefix(v, "1.7."):
		return V17, nil
	case v == "2" || strings.HasPrefix(v, "2."):
		return V2, nil
	}
	return "", fmt.Errorf("unsupported containerd version %q: want 1.6, 1.7 or 2.x", s)
}

// SupportsDialTimeout reports whether hosts.toml's dial_timeout has an
// effect. It was added in containerd 2.1 (backported to 2.0.x); 1.6 and 1.7
// have no such field and ignore the key.
func (v Version) SupportsDialTimeout() bool { return v == V2 }

// configVersion is the config.toml format version this containerd writes by
// default and reads natively.
func (v Version) configVersion() int {
	if v == V2 {
		return 3
	}
	return 2
}
