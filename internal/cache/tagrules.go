package cache

import (
	"context"
	"path"
	"time"
)

// TagRule gives the tags its glob (path.Match syntax) matches their own
// freshness, in place of Options.TagFreshness.
type TagRule struct {
	Match     string
	Freshness time.Duration
}

// freshnessOf is how long tag is served without revalidation, and the glob
// of the rule that said so ("" for tag_freshness). The first match wins.
func (t *tunables) freshnessOf(tag string) (time.Duration, string) {
	for _, r := range t.tagRules {
		// Globs were checked at load; a bad one matches nothing.
		if ok, _ := path.Match(r.Match, tag); ok {
			return r.Freshness, r.Match
		}
	}
	return t.tagFreshness, ""
}

// ResolveTag returns the digest a tag points at now, caching the manifest.
// Within the tag's freshness (its rule's, else tag_freshness) a cached tag
// is answered without asking the upstream; past it, revalidated with one
// HEAD. A rule only shortens or lengthens that window: an upstream failure
// past it is still answered stale, as without rules.
func (c *Cache) ResolveTag(ctx context.Context, name, tag string) (Resolved, error) {
	fresh, rule := c.tunables().freshnessOf(tag)
	res, err := c.resolveTag(ctx, name, tag, fresh)
	res.Rule = rule
	return res, err
}
