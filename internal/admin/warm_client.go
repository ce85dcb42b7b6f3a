package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/multiproxy/multiproxy/internal/warm"
)

// Warm asks the server to warm req's images and calls fn with each event
// as it arrives, the summary last. It returns an error if the request is
// refused, or if the stream breaks off before the summary.
func (c Client) Warm(ctx context.Context, req warm.Request, fn func(warm.Event)) error {
	hc := c.HTTP
	if hc == nil {
		// No overall timeout: a warm of many images takes as long as it
		// takes; ctx ends it.
		hc = &http.Client{}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("admin API: encode warm request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+"/api/v1/warm", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	if c.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := hc.Do(hr)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("admin API: %d: %s", resp.StatusCode, e.Error)
		}
		return fmt.Errorf("admin API: %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e warm.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("admin API: warm event %q: %w", sc.Text(), err)
		}
		fn(e)
		if e.Event == warm.EventSummary {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("admin API: warm stream: %w", err)
	}
	return fmt.Errorf("admin API: the warm stream ended without a summary")
}
