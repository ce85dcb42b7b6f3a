package differential

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// answer is what a client reads off a response.
type answer struct {
	status        int
	contentType   string
	digest        string // Docker-Content-Digest
	contentLength string
	contentRange  string
	etag          string // not compared: each server names its entities
	// body is the body's sha256, or for an error the first OCI error
	// code: messages are the server's own words.
	body string
	// listName and list are a tag list's name and tags.
	listName, list string
}

func (a answer) field(name string) string {
	switch name {
	case "status":
		return fmt.Sprint(a.status)
	case "Content-Type":
		return a.contentType
	case "Docker-Content-Digest":
		return a.digest
	case "Content-Length":
		return a.contentLength
	case "Content-Range":
		return a.contentRange
	case "body":
		return a.body
	}
	panic("unknown field " + name)
}

var fields = []string{"status", "Content-Type", "Docker-Content-Digest", "Content-Length", "Content-Range", "body"}

// client asks one server, following redirects as container clients do.
type client struct {
	base string
	hc   *http.Client
}

// newClient talks to base. With tokens it answers Bearer challenges as
// container clients do: a token from the challenge's realm for its service
// and scope, sent only to the host that asked for it, so a blob host
// elsewhere (the CDN) never sees it.
func newClient(base string, tokens bool) *client {
	var rt http.RoundTripper = &http.Transport{
		// Bodies are compared as sent: no transparent gzip.
		DisableCompression:    true,
		MaxIdleConnsPerHost:   8,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	if tokens {
		rt = &bearer{next: rt, tokens: map[string]string{}}
	}
	return &client{base: base, hc: &http.Client{Transport: rt, Timeout: time.Minute}}
}

// ownETag, as a request's ifRange, is the ETag the server asked gives.
const ownETag = "(the server's own ETag)"

type request struct {
	// item groups the requests about one manifest, blob or list; the
	// first of a group in the cold pass is the cache's first sight of it.
	item   string
	what   string
	method string
	path   string // after /v2/, query included
	accept string
	rng    string
	// ifRange is sent as If-Range: a resuming client's condition that
	// the blob is still the entity it had part of. ownETag stands for the
	// ETag the same server gives the blob, as a client resuming there
	// would send it.
	ifRange string
	// kind ("manifest", "blob", "referrer", "tags"), repo and ref are
	// parsed from path.
	kind, repo, ref string
}

func (c *client) do(t *testing.T, q request) answer {
	t.Helper()
	req, err := http.NewRequest(q.method, c.base+"/v2/"+q.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.accept != "" {
		req.Header.Set("Accept", q.accept)
	}
	if q.rng != "" {
		req.Header.Set("Range", q.rng)
	}
	if q.ifRange == ownETag {
		etag := c.do(t, request{what: q.what + " (its ETag)", method: http.MethodHead, path: q.path}).etag
		if etag == "" {
			t.Errorf("%s: HEAD answered no ETag to resume with", q.what)
		}
		req.Header.Set("If-Range", etag)
	} else if q.ifRange != "" {
		req.Header.Set("If-Range", q.ifRange)
	}
	// A registry that redirects a blob says its digest on the redirect; a
	// client has it from there even when the blob host does not repeat
	// it.
	var hopDigest string
	hc := *c.hc
	hc.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if len(via) > 5 {
			return fmt.Errorf("more than 5 redirects")
		}
		if d := r.Response.Header.Get("Docker-Content-Digest"); d != "" {
			hopDigest = d
		}
		return nil
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", q.method, q.path, err)
	}
	a := answer{
		status:        resp.StatusCode,
		contentType:   resp.Header.Get("Content-Type"),
		digest:        resp.Header.Get("Docker-Content-Digest"),
		contentLength: resp.Header.Get("Content-Length"),
		contentRange:  resp.Header.Get("Content-Range"),
		etag:          resp.Header.Get("Etag"),
	}
	if a.digest == "" {
		a.digest = hopDigest
	}
	if boundary, ok := byteranges(a.contentType); ok {
		// Several ranges: each server draws its own boundary, so the
		// parts are compared, not the bytes around them.
		a.contentType = "multipart/byteranges; boundary=(each its own)"
		a.body = partsDigest(t, body, boundary)
		return a
	}
	switch {
	case resp.StatusCode >= 400 && len(body) > 0:
		a.body = "error " + ociCode(body)
	case len(body) > 0:
		var tl struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if q.kind == "tags" && json.Unmarshal(body, &tl) == nil {
			l, _ := json.Marshal(tl.Tags)
			a.listName, a.list = tl.Name, string(l)
		}
		sum := sha256.Sum256(body)
		a.body = "sha256:" + hex.EncodeToString(sum[:])[:16] + "…"
	}
	return a
}

// byteranges is the boundary of a multipart/byteranges answer.
func byteranges(contentType string) (string, bool) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/byteranges" || params["boundary"] == "" {
		return "", false
	}
	return params["boundary"], true
}

// partsDigest is the digest of a multipart/byteranges body's parts: each
// part's Content-Type, Content-Range and bytes, in order.
func partsDigest(t *testing.T, body []byte, boundary string) string {
	t.Helper()
	h := sha256.New()
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	n := 0
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Sprintf("(bad multipart body: %v)", err)
		}
		b, err := io.ReadAll(part)
		if err != nil {
			return fmt.Sprintf("(bad multipart part: %v)", err)
		}
		fmt.Fprintf(h, "Content-Type: %s\nContent-Range: %s\n%d\n", part.Header.Get("Content-Type"), part.Header.Get("Content-Range"), len(b))
		h.Write(b)
		n++
	}
	return fmt.Sprintf("%d parts sha256:%s…", n, hex.EncodeToString(h.Sum(nil))[:16])
}

// ociCode is the first OCI error code of an error body, or what the body
// is when it is no OCI error (a CDN's XML, a text 404).
func ociCode(body []byte) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		s := strings.TrimSpace(string(body))
		if len(s) > 40 {
			s = s[:40] + "…"
		}
		return fmt.Sprintf("(not OCI: %q)", s)
	}
	return e.Errors[0].Code
}

// bearer answers Bearer challenges with anonymous tokens, per host and
// repository.
type bearer struct {
	next   http.RoundTripper
	mu     sync.Mutex
	tokens map[string]string // host + " " + repository
}

var repoInPath = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs|tags|referrers)/`)

func tokenKey(r *http.Request) string {
	repo := ""
	if m := repoInPath.FindStringSubmatch(r.URL.Path); m != nil {
		repo = m[1]
	}
	return r.URL.Host + " " + repo
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	key := tokenKey(r)
	b.mu.Lock()
	tok := b.tokens[key]
	b.mu.Unlock()
	send := func(tok string) (*http.Response, error) {
		r2 := r.Clone(r.Context())
		if tok != "" {
			r2.Header.Set("Authorization", "Bearer "+tok)
		}
		return b.next.RoundTrip(r2)
	}
	resp, err := send(tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	params, ok := bearerChallenge(resp.Header.Get("WWW-Authenticate"))
	if !ok {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	tok, err = b.fetch(r, params)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.tokens[key] = tok
	b.mu.Unlock()
	return send(tok)
}

func (b *bearer) fetch(r *http.Request, params map[string]string) (string, error) {
	u, err := url.Parse(params["realm"])
	if err != nil {
		return "", err
	}
	q := u.Query()
	for _, k := range []string{"service", "scope"} {
		if v := params[k]; v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	resp, err := b.next.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token from %s: %s", u.Host, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		return "", err
	}
	if tr.Token == "" {
		tr.Token = tr.AccessToken
	}
	return tr.Token, nil
}

var challengeParam = regexp.MustCompile(`(\w+)="([^"]*)"`)

func bearerChallenge(h string) (map[string]string, bool) {
	scheme, rest, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "bearer") {
		return nil, false
	}
	params := map[string]string{}
	for _, m := range challengeParam.FindAllStringSubmatch(rest, -1) {
		params[strings.ToLower(m[1])] = m[2]
	}
	return params, params["realm"] != ""
}
