// Package version says which multiproxy this is, from the build information
// the Go toolchain embeds: the module version for `go install …@vX`, else the
// VCS revision of the checkout it was built from.
package version

import (
	"runtime/debug"
	"sync"
)

var get = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev + modified
})

// Version is multiproxy's version string, e.g. "v1.2.0" or "devel-0123abcd4567".
func Version() string { return get() }

// UserAgent is what multiproxy sends upstream, so registry operators can
// tell its requests from their clients' own.
func UserAgent() string { return "multiproxy/" + Version() }
