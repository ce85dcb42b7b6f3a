package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"

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
