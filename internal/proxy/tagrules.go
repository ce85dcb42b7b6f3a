package proxy

import (
	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
)

// tagRules hands an upstream's tag_rules to its cache.
func tagRules(rs []config.TagRule) []cache.TagRule {
	out := make([]cache.TagRule, len(rs))
	for i, r := range rs {
		out[i] = cache.TagRule(r)
	}
	return out
}
