package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls a running multiproxy's admin API.
type Client struct {
	Base  string // e.g. http://127.0.0.1:9090
	Token string
	HTTP  *http.Client
}

// BaseURL turns a listen address (":9090", "127.0.0.1:9090") or URL into a base URL.
func BaseURL(addr string) string {
	if strings.Contains(addr, "://") {
		return strings.TrimRight(addr, "/")
	}
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	return "http://" + addr
}

// Resolve asks for the digest an image's tag points at.
func (c Client) Resolve(ctx context.Context, image string) (Resolution, error) {
	var res Resolution
	err := c.call(ctx, http.MethodGet, "/api/v1/resolve?image="+url.QueryEscape(image), &res)
	return res, err
}

// Purge drops a cached tag.
func (c Client) Purge(ctx context.Context, image string) error {
	return c.call(ctx, http.MethodPost, "/api/v1/purge?image="+url.QueryEscape(image), nil)
}

// GC collects an upstream's garbage, or with dryRun reports what it would
// delete; the server's report is decoded into out if it is not nil.
func (c Client) GC(ctx context.Context, upstream string, dryRun bool, out any) error {
	q := url.Values{"upstream": {upstream}}
	if dryRun {
		q.Set("dry_run", "true")
	}
	return c.call(ctx, http.MethodPost, "/api/v1/gc?"+q.Encode(), out)
}

func (c Client) call(ctx context.Context, method, path string, out any) error {
	return c.callBody(ctx, method, path, nil, out)
}

// callBody is call with a JSON request body, if body is not nil.
func (c Client) callBody(ctx context.Context, method, path string, body []byte, out any) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("admin API: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(answer, &e) == nil && e.Error != "" {
			return fmt.Errorf("admin API: %d: %s", resp.StatusCode, e.Error)
		}
		return fmt.Errorf("admin API: %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("admin API: decode answer: %w", err)
		}
	}
	return nil
}
