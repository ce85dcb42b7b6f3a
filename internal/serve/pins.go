package serve

// Pins: the admin API's pin add, rm and ls (admin.Pinner), the check that
// pins fit under max_size before a config is applied, and what pins hold
// on /metrics and the status page.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/multiproxy/multiproxy/internal/admin"
	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/metrics"
)

// pinnedScrapeTimeout bounds the walk of pinned manifests behind a scrape
// or a status page (cached for a while by the cache; on a bucket, a few
// requests).
const pinnedScrapeTimeout = 10 * time.Second

// checkPins refuses a config whose pins (its own and those added at run
// time) alone hold more than an upstream's max_size: eviction could never
// get under the cap, and it must not evict a pin to try. Upstreams not
// running on the same store yet hold nothing to check.
func checkPins(ctx context.Context, ups []*running, cfg config.Config) error {
	var errs []error
	for i, u := range cfg.Upstreams {
		if u.MaxSize <= 0 {
			continue
		}
		for _, r := range ups {
			if r.name != u.Name || r.cfg.Storage.Path != u.Storage.Path {
				continue
			}
			n, err := r.server.Cache().PinnedBytesWith(ctx, u.Pins)
			if err != nil {
				errs = append(errs, fmt.Errorf("upstream %s: %w", u.Name, err))
				continue
			}
			if n > int64(u.MaxSize) {
				errs = append(errs, &config.ValidationError{Field: fmt.Sprintf("upstreams[%d].pins", i),
					Msg: fmt.Sprintf("pins hold %s of cached content, over max_size %s: unpin (here or with `multiproxy pin rm`) or raise max_size",
						config.ByteSize(n), u.MaxSize)})
			}
		}
	}
	return errors.Join(errs...)
}

// reportPinned makes /metrics show what an upstream's pins hold.
func reportPinned(m *metrics.Upstream, c *cache.Cache) {
	m.PinnedBytesFunc(func() (int64, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), pinnedScrapeTimeout)
		defer cancel()
		n, _, err := c.PinnedBytes(ctx)
		return n, err == nil
	})
}

// pinnedStatus is what an upstream's pins hold for the status page, or nil
// without pins.
func pinnedStatus(c *cache.Cache) *int64 {
	ctx, cancel := context.WithTimeout(context.Background(), pinnedScrapeTimeout)
	defer cancel()
	n, pins, err := c.PinnedBytes(ctx)
	if err != nil || pins == 0 {
		return nil
	}
	return &n
}

// pinTarget finds the upstream a pin belongs to and the ref within it.
// Named, the upstream takes repo:tag or repo@digest, optionally prefixed by
// one of its registry names; unnamed, the ref's registry chooses it, as
// for resolve (nginx:1.25 is Docker Hub's).
func (b *backend) pinTarget(upstream, ref string) (*running, string, error) {
	ups, _ := b.ups.snapshot()
	if upstream == "" {
		srv, named, err := b.server(ref)
		if err != nil {
			return nil, "", err
		}
		within := reference.Path(named)
		switch n := named.(type) {
		case reference.Canonical:
			within += "@" + n.Digest().String()
		case reference.NamedTagged:
			within += ":" + n.Tag()
		default:
			return nil, "", &admin.StatusError{Status: http.StatusBadRequest, Code: admin.CodeNameInvalid,
				Err: fmt.Errorf("%q names no tag or digest: a pin is an image, e.g. %s:1.25", ref, reference.FamiliarName(named))}
		}
		for _, r := range ups {
			if r.server == srv {
				return r, within, nil
			}
		}
		return nil, "", &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream for %q", ref)}
	}
	for _, r := range ups {
		if r.name != upstream {
			continue
		}
		if host, rest, ok := strings.Cut(ref, "/"); ok && strings.ContainsAny(host, ".:") && r.cfg.Serves(host) {
			ref = rest
		}
		return r, ref, nil
	}
	return nil, "", &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream named %q", upstream)}
}

// Pins implements admin.Pinner.
func (b *backend) Pins(ctx context.Context, upstream string) ([]admin.UpstreamPins, error) {
	ups, _ := b.ups.snapshot()
	out := []admin.UpstreamPins{}
	for _, r := range ups {
		if upstream != "" && r.name != upstream {
			continue
		}
		pins, total, err := r.server.Cache().Pins(ctx)
		if err != nil {
			b.log.Error("admin pins: list", "upstream", r.name, "err", err)
			return nil, &admin.StatusError{Status: http.StatusInternalServerError, Code: admin.CodeUnknown,
				Err: fmt.Errorf("listing the pins of %s failed (the server log has the details)", r.name)}
		}
		up := admin.UpstreamPins{Upstream: r.name, PinnedBytes: total, MaxSize: int64(r.cfg.MaxSize), Pins: []admin.Pin{}}
		for _, pin := range pins {
			up.Pins = append(up.Pins, adminPin(r.name, pin))
		}
		out = append(out, up)
	}
	if upstream != "" && len(out) == 0 {
		return nil, &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("no upstream named %q", upstream)}
	}
	return out, nil
}

// AddPin implements admin.Pinner.
func (b *backend) AddPin(ctx context.Context, upstream, ref string) (admin.Pin, error) {
	r, within, err := b.pinTarget(upstream, ref)
	if err != nil {
		return admin.Pin{}, err
	}
	pin, err := r.server.Cache().AddPin(ctx, within, int64(r.cfg.MaxSize))
	if err != nil {
		return admin.Pin{}, b.pinError(r.name, ref, err)
	}
	return adminPin(r.name, pin), nil
}

// RemovePin implements admin.Pinner.
func (b *backend) RemovePin(ctx context.Context, upstream, ref string) error {
	r, within, err := b.pinTarget(upstream, ref)
	if err != nil {
		return err
	}
	if err := r.server.Cache().RemovePin(ctx, within); err != nil {
		return b.pinError(r.name, ref, err)
	}
	return nil
}

func adminPin(upstream string, p cache.Pin) admin.Pin {
	return admin.Pin{Upstream: upstream, Ref: p.Ref, Source: p.Source, Digest: p.Digest.String(), Bytes: p.Bytes}
}

// pinError answers a failed pin change: the client's mistakes and refusals
// with their 4xx, the upstream's answer as a pull would get it, anything
// else logged and told only that it failed.
func (b *backend) pinError(upstream, ref string, err error) error {
	var limit *cache.PinLimitError
	var bad *cache.RequestError
	switch {
	case errors.As(err, &limit):
		return &admin.StatusError{Status: http.StatusConflict, Code: admin.CodeDenied, Err: fmt.Errorf("%s: %s", upstream, limit.Error())}
	case errors.Is(err, cache.ErrPinInConfig):
		return &admin.StatusError{Status: http.StatusConflict, Code: admin.CodeDenied, Err: fmt.Errorf("%s is %w", ref, err)}
	case errors.Is(err, cache.ErrPinUnknown):
		return &admin.StatusError{Status: http.StatusNotFound, Err: fmt.Errorf("%s is not pinned on %s", ref, upstream)}
	case errors.As(err, &bad):
		return &admin.StatusError{Status: http.StatusBadRequest, Code: admin.CodeNameInvalid, Err: bad.Err}
	case errors.Is(err, cache.ErrPinsLock):
		// Replicas change the shared pins file only under the cluster's
		// lock; without Redis the change waits for the operator to retry.
		b.log.Warn("admin pin: cluster pins lock unavailable", "upstream", upstream, "ref", ref, "err", err)
		return &admin.StatusError{Status: http.StatusServiceUnavailable, Code: admin.CodeUnavailable,
			Err: fmt.Errorf("%s: pins not changed: the replicas' pins lock (through Redis) is unavailable; retry once coordination is back", upstream)}
	}
	var se *admin.StatusError
	if f := resolveError(ref, err); errors.As(f, &se) && se.Status != http.StatusInternalServerError {
		// The upstream's answer (not found, down, refusing), as a pull
		// of the ref would get it.
		b.log.Warn("admin pin: upstream failed", "upstream", upstream, "ref", ref, "err", err)
		return f
	}
	b.log.Error("admin pin failed", "upstream", upstream, "ref", ref, "err", err)
	return &admin.StatusError{Status: http.StatusInternalServerError, Code: admin.CodeUnknown,
		Err: fmt.Errorf("pinning %s failed (the server log has the details)", ref)}
}

var _ admin.Pinner = (*backend)(nil)
