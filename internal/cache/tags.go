package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/storelayout"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// TagList is one page of a repository's tag list for a client.
type TagList struct {
	Body []byte
	// Next is the query of the following page, or "".
	Next string
	// Stale is set when the upstream failed and the list was made from the
	// tags cached here.
	Stale bool
	Cause upstream.Cause
}

// ListTags answers with the upstream's tag list: tags are mutable, so the
// upstream's answer is the truth. It is encoded here under the name the
// client asked for, whatever the upstream called the repository (another
// name behind a redirected API is its own business). When the upstream
// fails (down, slow, 5xx, 429, refusing credentials, answering something
// that is not a tag list) the list is made from the tags cached here,
// paginated the same way, and marked stale, as a stale tag is served. A 404
// from a working upstream is passed on.
func (c *Cache) ListTags(ctx context.Context, name, query string) (TagList, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return TagList{}, err
	}
	up, err := c.client().GetTags(ctx, name, query)
	if err == nil {
		body, err := encodeTags(name, up.Tags)
		if err != nil {
			return TagList{}, err
		}
		return TagList{Body: body, Next: up.Next}, nil
	}
	c.upstreamFailed(KindTag, err)
	if upstream.IsNotFound(err) {
		return TagList{}, err
	}
	local, lerr := repo.Tags(ctx).All(ctx)
	if lerr != nil || len(local) == 0 {
		return TagList{}, err
	}
	cause := upstream.CauseOf(err)
	c.staleServed(cause)
	c.log.Warn("serving stale tag list", "repository", name, "cause", cause, "err", err)
	page, next := paginate(local, query)
	body, merr := encodeTags(name, page)
	if merr != nil {
		return TagList{}, merr
	}
	return TagList{Body: body, Next: next, Stale: true, Cause: cause}, nil
}

// encodeTags is the distribution spec's tag list body.
func encodeTags(name string, tags []string) ([]byte, error) {
	if tags == nil {
		tags = []string{}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, tags})
	if err != nil {
		return nil, fmt.Errorf("encode tag list: %w", err)
	}
	// distribution's json.Encoder ends its body with a newline; the same
	// list must be the same bytes.
	return append(body, '\n'), nil
}

// paginate applies the distribution spec's n and last to sorted tags.
func paginate(tags []string, query string) (page []string, next string) {
	slices.Sort(tags)
	q, _ := url.ParseQuery(query)
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	n, err := strconv.Atoi(q.Get("n"))
	if err == nil && n == 0 {
		// distribution answers n=0 with no tags and no next page.
		return []string{}, ""
	}
	if err != nil || n < 0 || n >= len(tags) {
		return tags, ""
	}
	page = tags[:n]
	nq := url.Values{"n": {strconv.Itoa(n)}, "last": {page[len(page)-1]}}
	return page, nq.Encode()
}

// Resolved is the answer to a tag lookup.
type Resolved struct {
	Digest digest.Digest
	// Stale is set when the upstream could not confirm the tag and the cached
	// answer was used instead.
	Stale bool
	Cause upstream.Cause
	// Manifest is set when the store could not take the manifest: it is
	// to be served from memory.
	Manifest *Manifest
	// Rule is the glob of the tag rule that set the tag's freshness, or
	// "" for tag_freshness.
	Rule string
}

// resolveTag is ResolveTag with the tag's freshness decided.
func (c *Cache) resolveTag(ctx context.Context, name, tag string, fresh time.Duration) (Resolved, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return Resolved{}, err
	}
	tags := repo.Tags(ctx)
	local, lerr := tags.Get(ctx, tag)
	if lerr == nil {
		// Claim before looking, as for blobs: a collection running now
		// either sees the claim or has already removed the manifest, and
		// then the lookup says so.
		c.guard.Use(local.Digest)
	}
	hasLocal := lerr == nil && c.hasManifest(ctx, repo, local.Digest)
	key := name + ":" + tag

	if hasLocal && fresh > 0 && c.isFresh(key, fresh) {
		c.obs.Hit(KindTag)
		c.used(name, local.Digest)
		return Resolved{Digest: local.Digest}, nil
	}

	stale := func(err error) (Resolved, error) {
		cause := upstream.CauseOf(err)
		c.staleServed(cause)
		c.used(name, local.Digest)
		c.log.Warn("serving stale tag", "repository", name, "tag", tag, "digest", local.Digest, "cause", cause, "err", err)
		return Resolved{Digest: local.Digest, Stale: true, Cause: cause}, nil
	}

	info, err := c.revalidate(ctx, name, tag)
	if err == nil && info.Digest == "" {
		// Some registries omit the digest on HEAD; GET by tag and hash it.
		info, err = c.fetchManifestByTag(ctx, repo, name, tag)
	}
	if err != nil {
		if upstream.IsNotFound(err) {
			if lerr == nil {
				// The tag is gone upstream; a later outage must not bring it back.
				if uerr := tags.Untag(ctx, tag); uerr != nil {
					c.log.Warn("drop deleted tag", "repository", name, "tag", tag, "err", uerr)
				}
			}
			return Resolved{}, err
		}
		if hasLocal {
			return stale(err)
		}
		return Resolved{}, err
	}

	if hasLocal && info.Digest == local.Digest {
		c.obs.Hit(KindTag)
		c.used(name, local.Digest)
		c.markFresh(key, fresh)
		return Resolved{Digest: local.Digest}, nil
	}
	c.obs.Miss(KindTag)
	desc, mem, err := c.ensureManifest(ctx, repo, name, info.Digest)
	if err != nil {
		if hasLocal && !upstream.IsNotFound(err) {
			return stale(err)
		}
		return Resolved{}, err
	}
	if mem != nil {
		return Resolved{Digest: info.Digest, Manifest: mem}, nil
	}
	if err := tags.Tag(ctx, tag, desc); err != nil {
		// The manifest is stored and is what the tag points at now; only
		// remembering the tag failed, which the next pull retries.
		c.storageFailed(OpManifest, fmt.Errorf("tag %s:%s: %w", name, tag, err))
		c.removeTemps(storelayout.OnDisk(c.root, storelayout.TagCurrent(name, tag)),
			storelayout.OnDisk(c.root, storelayout.TagIndexEntry(name, tag, info.Digest)))
		return Resolved{Digest: info.Digest}, nil
	}
	c.markFresh(key, fresh)
	return Resolved{Digest: info.Digest}, nil
}

// revalidate asks the upstream where a tag points now. Concurrent pulls of
// one tag share one HEAD: a DaemonSet rolling out to 500 nodes sends about
// one, not 500. A pull joins only a HEAD still in flight, so its answer is
// at most one upstream round trip older than the pull: a push is still seen
// by the next pull that starts after the HEAD returns.
func (c *Cache) revalidate(ctx context.Context, name, tag string) (upstream.ManifestInfo, error) {
	ch := c.heads.DoChan(name+":"+tag, func() (any, error) {
		// Detached: the pulls waiting on it share the answer, and the
		// first one leaving must not fail the rest.
		info, err := c.client().HeadManifest(context.WithoutCancel(ctx), name, tag)
		c.upstreamFailed(KindManifest, err)
		return info, err
	})
	select {
	case <-ctx.Done():
		return upstream.ManifestInfo{}, ctx.Err()
	case r := <-ch:
		if r.Shared {
			c.obs.DedupJoin(KindTag)
		}
		info, _ := r.Val.(upstream.ManifestInfo)
		return info, r.Err
	}
}

// fetchManifestByTag is the fallback for upstreams whose HEAD has no digest.
func (c *Cache) fetchManifestByTag(ctx context.Context, repo distribution.Repository, name, tag string) (upstream.ManifestInfo, error) {
	body, info, err := c.client().GetManifest(ctx, name, tag)
	if err != nil {
		c.upstreamFailed(KindManifest, err)
		return info, err
	}
	var unstored *notStored
	if _, err := c.putManifest(ctx, repo, body, info); err != nil && !errors.As(err, &unstored) {
		c.upstreamFailed(KindManifest, err)
		return info, err
	}
	return info, nil
}

func (c *Cache) isFresh(key string, fresh time.Duration) bool {
	c.freshMu.Lock()
	defer c.freshMu.Unlock()
	t, ok := c.fresh[key]
	return ok && time.Since(t) < fresh
}

func (c *Cache) markFresh(key string, fresh time.Duration) {
	if fresh <= 0 {
		return
	}
	c.freshMu.Lock()
	defer c.freshMu.Unlock()
	c.fresh[key] = time.Now()
}

// ResetFreshness forgets when tags were last revalidated, so the next pull of
// each revalidates. A recycle calls it to drop the map's memory.
func (c *Cache) ResetFreshness() {
	c.freshMu.Lock()
	c.fresh = map[string]time.Time{}
	c.freshMu.Unlock()
}

// Forget drops a cached tag, so the next pull resolves it upstream again.
func (c *Cache) Forget(ctx context.Context, name, tag string) error {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return err
	}
	c.freshMu.Lock()
	delete(c.fresh, name+":"+tag)
	c.freshMu.Unlock()
	err = repo.Tags(ctx).Untag(ctx, tag)
	var unknown distribution.ErrTagUnknown
	if errors.As(err, &unknown) {
		return nil
	}
	return err
}
