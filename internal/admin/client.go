package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/multiproxy/multiproxy/internal/warm"
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
		return statusError(resp.StatusCode, answer)
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("admin API: decode answer: %w", err)
		}
	}
	return nil
}

// APIError is an answer other than 200 OK, as a client sees it. A 4xx
// says the request was wrong, which a command reports as a usage error.
type APIError struct {
	Status  int
	Message string // the API's error text, if it gave one
}

func (e *APIError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("admin API: %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("admin API: %d %s", e.Status, http.StatusText(e.Status))
}

func statusError(code int, body []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	return &APIError{Status: code, Message: e.Error}
}

// maxEventLine bounds one line of the warm stream; an event is a few
// hundred bytes, so a longer line is not the protocol.
const maxEventLine = 64 << 10

// Warm asks the server to fill its cache with req.Images and calls on
// with each event of the answer as it arrives. It returns after the
// summary event; a stream that ends before it is an error, so a server
// that died halfway is not taken for a finished warm. Only ctx bounds the
// whole call, since warming large images takes as long as it takes.
func (c Client) Warm(ctx context.Context, req warm.Request, on func(warm.Event)) error {
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			ResponseHeaderTimeout: 30 * time.Second,
		}}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("admin API: warm request: %w", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+"/api/v1/warm", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return statusError(resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4096), maxEventLine)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var ev warm.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("admin API: warm answer line %d: %w", line, err)
		}
		on(ev)
		if ev.Event == warm.EventSummary {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("admin API: warm answer: %w", err)
	}
	return errors.New("admin API: the warm answer ended before its summary")
}
