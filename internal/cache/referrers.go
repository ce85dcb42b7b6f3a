package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Referrers is the list of manifests whose subject is a digest, as an OCI
// image index, for a client.
type Referrers struct {
	Body []byte
	// Filtered is set when the list was cut to one artifactType.
	Filtered bool
	Stale    bool
	Cause    upstream.Cause
}

// FallbackTag is the tag the distribution spec's referrers tag schema keeps
// d's referrers index under: "sha256-<hex>".
func FallbackTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded()
}

// Referrers answers the referrers API for subject d: signatures and
// attestations that Kyverno and cosign look for. The upstream's referrers
// API is asked first; an upstream without one (a 404) is read through the
// tag schema, the sha256-<hex> tag, as the spec's fallback says. Either way
// the list is kept under that tag here, revalidated on every request like
// any tag, and served stale when the upstream fails, so verification of a
// cached image does not depend on the internet. The referrer manifests and
// their blobs are ordinary cached content.
func (c *Cache) Referrers(ctx context.Context, name string, d digest.Digest, artifactType string) (Referrers, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return Referrers{}, err
	}
	tag := FallbackTag(d)
	var out Referrers
	body, err := c.client().GetReferrers(ctx, name, d)
	c.upstreamFailed(KindReferrers, err)
	// Only the API's answer comes parsed; a list read through the tag
	// schema, or kept here, is a manifest that must still be a referrers
	// index before a client gets it.
	parsed := err == nil
	switch {
	case err == nil:
		// Keep it for outages; a store that cannot take it changes nothing
		// for this answer.
		info := upstream.ManifestInfo{MediaType: v1.MediaTypeImageIndex, Digest: digest.FromBytes(body)}
		if desc, perr := c.putManifest(ctx, repo, body, info); perr == nil {
			_ = repo.Tags(ctx).Tag(ctx, tag, desc)
		}
	case upstream.IsNotFound(err):
		res, rerr := c.ResolveTag(ctx, name, tag)
		switch {
		case upstream.IsNotFound(rerr):
			body, parsed = emptyIndex, true
		case rerr != nil:
			return Referrers{}, rerr
		default:
			out.Stale, out.Cause = res.Stale, res.Cause
			if res.Manifest != nil {
				body = res.Manifest.Body
			} else if body, err = c.manifestBytes(ctx, name, res.Digest); err != nil {
				return Referrers{}, err
			}
		}
	default:
		local, lerr := repo.Tags(ctx).Get(ctx, tag)
		if lerr != nil {
			return Referrers{}, err
		}
		cause := upstream.CauseOf(err)
		c.staleServed(cause)
		c.log.Warn("serving stale referrers", "repository", name, "subject", d, "cause", cause, "err", err)
		out.Stale, out.Cause = true, cause
		if body, err = c.manifestBytes(ctx, name, local.Digest); err != nil {
			return Referrers{}, err
		}
	}
	if !parsed {
		if body, err = upstream.ParseReferrers(body); err != nil {
			c.upstreamFailed(KindReferrers, err)
			return Referrers{}, err
		}
	}
	if artifactType != "" {
		if body, err = filterReferrers(body, artifactType); err != nil {
			return Referrers{}, err
		}
		out.Filtered = true
	}
	out.Body = body
	return out, nil
}

var emptyIndex = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)

// manifestBytes reads a stored manifest as it was received.
func (c *Cache) manifestBytes(ctx context.Context, name string, d digest.Digest) ([]byte, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	m, err := ms.Get(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", d, err)
	}
	_, payload, err := m.Payload()
	return payload, err
}

// filterReferrers keeps the descriptors of one artifactType, as the spec's
// artifactType query asks.
func filterReferrers(body []byte, artifactType string) ([]byte, error) {
	var idx v1.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return nil, &upstream.Error{Op: "parse referrers", Cause: upstream.CauseBadContent, Err: err}
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.ArtifactType == artifactType {
			kept = append(kept, m)
		}
	}
	idx.Manifests = kept
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	out, err := json.Marshal(idx)
	if err != nil {
		return nil, errors.New("encode referrers")
	}
	return out, nil
}
