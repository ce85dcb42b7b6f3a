package config

import (
	"fmt"
	"path"
	"time"
)

// TagRule gives the tags its glob matches their own freshness: how long a
// cached tag is served without asking the upstream. Match uses path.Match
// syntax (`*`, `?`, `[a-z]`, `\` escapes); a tag has no `/`, so `*` spans
// the whole tag. A rule bounds how long a tag goes without revalidation,
// nothing more: when the upstream fails, a stale tag is served as before.
type TagRule struct {
	Match     string        `mapstructure:"match" yaml:"match"`
	Freshness time.Duration `mapstructure:"freshness" yaml:"freshness"`
}

// checkTagRules reports empty or malformed globs and negative freshness,
// naming upstreams[i].tag_rules[j].
func checkTagRules(i int, rules []TagRule) []error {
	var errs []error
	for j, r := range rules {
		field := func(name string) string { return fmt.Sprintf("upstreams[%d].tag_rules[%d].%s", i, j, name) }
		if r.Match == "" {
			errs = append(errs, fieldErr(field("match"), "required"))
		} else if _, err := path.Match(r.Match, ""); err != nil {
			errs = append(errs, fieldErr(field("match"), "invalid glob %q: %v (path.Match syntax: *, ?, [a-z], \\ escapes)", r.Match, err))
		}
		if r.Freshness < 0 {
			errs = append(errs, fieldErr(field("freshness"), "must not be negative, got %s", r.Freshness))
		}
	}
	return errs
}
