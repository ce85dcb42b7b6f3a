package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// bearerTransport is a registry client's token handling, as containerd's:
// on a 401 Bearer challenge from the registry host it fetches a token from
// the realm (anonymously) for the challenge's scope and retries; tokens are
// cached per repository and sent only to the registry host, never to the
// CDN a blob GET is redirected to.
type bearerTransport struct {
	base   http.RoundTripper
	host   string
	mu     sync.Mutex
	tokens map[string]string // repository -> token
}

func newBearerClient(host string) *http.Client {
	c := newClient()
	c.Transport = &bearerTransport{base: c.Transport, host: host, tokens: map[string]string{}}
	return c
}

// repoOf is the repository of a /v2/<name>/(manifests|blobs)/... path.
func repoOf(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return ""
	}
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(rest, k); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host {
		return t.base.RoundTrip(req)
	}
	repo := repoOf(req.URL.Path)
	t.mu.Lock()
	tok := t.tokens[repo]
	t.mu.Unlock()
	send := func(tok string) (*http.Response, error) {
		if tok == "" {
			return t.base.RoundTrip(req)
		}
		r2 := req.Clone(req.Context())
		r2.Header.Set("Authorization", "Bearer "+tok)
		return t.base.RoundTrip(r2)
	}
	resp, err := send(tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || (req.Body != nil && req.Body != http.NoBody) {
		return resp, err
	}
	ch := parseBearer(resp.Header.Get("WWW-Authenticate"))
	if ch == nil || ch["realm"] == "" {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	tok, err = fetchToken(req.Context(), t.base, ch)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.tokens[repo] = tok
	t.mu.Unlock()
	return send(tok)
}

// parseBearer reads `Bearer realm="...",service="...",scope="..."`.
func parseBearer(h string) map[string]string {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return nil
	}
	out := map[string]string{}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `"`)
			if end < 0 {
				break
			}
			out[k], rest = v[1:1+end], v[2+end:]
		} else {
			val, after, _ := strings.Cut(v, ",")
			out[k], rest = strings.TrimSpace(val), after
		}
		rest = strings.TrimLeft(rest, ", ")
	}
	return out
}

func fetchToken(ctx context.Context, tr http.RoundTripper, ch map[string]string) (string, error) {
	u, err := url.Parse(ch["realm"])
	if err != nil {
		return "", err
	}
	q := u.Query()
	if s := ch["service"]; s != "" {
		q.Set("service", s)
	}
	if s := ch["scope"]; s != "" {
		q.Set("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token: status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if body.Token == "" {
		body.Token = body.AccessToken
	}
	if body.Token == "" {
		return "", errors.New("token: empty")
	}
	return body.Token, nil
}
