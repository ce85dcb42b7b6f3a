package gc

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
)

// markPinned marks every manifest a pin holds, so that no policy evicts
// it: the manifest a pinned tag points at now or a pinned digest, and, for
// an index, its platforms' manifests. Their blobs stay because the sweep
// marks from the manifests that stay. Pins come from the config (cfgPins)
// and from the store (cache.PinsPath); a store whose pins cannot be read is
// not collected, since that could evict what they hold.
func markPinned(ctx context.Context, st Store, cfgPins []string, ms []*manifest) error {
	stored, err := cache.ReadPins(ctx, st.Driver)
	if err != nil {
		return fmt.Errorf("gc %s: %w", st.Name, err)
	}
	pins := slices.Concat(cfgPins, stored)
	if len(pins) == 0 {
		return nil
	}
	byKey := make(map[string]*manifest, len(ms))
	for _, m := range ms {
		byKey[m.repo+"@"+m.digest.String()] = m
	}
	var hold func(m *manifest)
	hold = func(m *manifest) {
		if m.pinned {
			return
		}
		m.pinned = true
		for _, r := range m.refs {
			if child := byKey[m.repo+"@"+r.String()]; child != nil {
				hold(child)
			}
		}
	}
	for _, raw := range pins {
		ref, err := config.ParsePin(raw)
		if err != nil {
			continue // checked at load or when added
		}
		if ref.Digest != "" {
			if m := byKey[ref.Repo+"@"+ref.Digest.String()]; m != nil {
				hold(m)
			}
			continue
		}
		for _, m := range ms {
			if m.repo == ref.Repo && slices.Contains(m.tags, ref.Tag) {
				hold(m)
			}
		}
	}
	return nil
}

// notePinned reports what pins hold in res and warns when that alone is
// over max_size: eviction then stops short of the cap rather than evict a
// pin, and says so instead of failing silently.
func notePinned(res *Result, ms []*manifest, sizes map[digest.Digest]int64, p Policy, log *slog.Logger) {
	held := map[digest.Digest]bool{}
	for _, m := range ms {
		if !m.pinned {
			continue
		}
		held[m.digest] = true
		for _, r := range m.refs {
			held[r] = true
		}
	}
	for d := range held {
		res.PinnedBytes += sizes[d]
	}
	if p.MaxSize > 0 && res.PinnedBytes > p.MaxSize {
		log.Warn("pins alone hold more than max_size; nothing pinned is evicted",
			"upstream", res.Upstream, "pinned_bytes", res.PinnedBytes, "max_size", p.MaxSize)
	}
}
