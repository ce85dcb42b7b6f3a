package upstream

import (
	"context"
	"net/http"
	"net/url"
	"strings"
)

// MaxTagListSize bounds a tag list body; registries paginate long lists.
const MaxTagListSize = 4 << 20

// TagList is one page of a repository's tags as the upstream sent it.
type TagList struct {
	// Tags are the page's tags, in the upstream's order.
	Tags []string
	// Next is the query (n, last) of the following page, from the
	// upstream's Link header, or "" on the last page.
	Next string
}

// GetTags fetches one page of a repository's tag list; query is the
// client's (n, last), passed on as is.
func (c *Client) GetTags(ctx context.Context, repo, query string) (TagList, error) {
	ctx, cancelAll := context.WithTimeout(ctx, 2*c.timeout)
	defer cancelAll()
	path := "/v2/" + repo + "/tags/list"
	if query != "" {
		path += "?" + query
	}
	resp, cancel, err := c.headers(ctx, "get tags", http.MethodGet, repo, path, []string{"application/json"})
	if err != nil {
		return TagList{}, err
	}
	defer cancel()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return TagList{}, statusError("get tags", resp)
	}
	body, err := readSmall(resp, "get tags", MaxTagListSize)
	if err != nil {
		return TagList{}, err
	}
	tags, err := parseTagList(body)
	if err != nil {
		return TagList{}, err
	}
	next, err := nextQuery(resp.Header.Get("Link"))
	if err != nil {
		return TagList{}, err
	}
	return TagList{Tags: tags, Next: next}, nil
}

// nextQuery takes the query of a Link header's rel="next" URL. Only the
// query is kept: the path is the upstream's (under a redirected API, another
// prefix), and the client must come back to us. The query is re-encoded
// from its parsed values, so what goes into our own Link header is ours.
func nextQuery(link string) (string, error) {
	for part := range strings.SplitSeq(link, ",") {
		if !strings.Contains(part, `rel="next"`) {
			continue
		}
		start, end := strings.IndexByte(part, '<'), strings.IndexByte(part, '>')
		if start < 0 || end <= start {
			continue
		}
		u, err := url.Parse(part[start+1 : end])
		if err != nil {
			return "", badContent("get tags", "next page link: %w", err)
		}
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return "", badContent("get tags", "next page link: %w", err)
		}
		return q.Encode(), nil
	}
	return "", nil
}
