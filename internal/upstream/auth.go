package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// maxAuthEntries bounds the credentials kept for reuse, one per host and
// repository: a token is scoped to one repository, and a cache proxying
// thousands of repositories must not keep a token for each forever.
const maxAuthEntries = 1024

// defaultTokenLifetime is what the token protocol says to assume when the
// token service gives no expires_in.
const defaultTokenLifetime = 60 * time.Second

// challenge is one parsed WWW-Authenticate header.
type challenge struct {
	scheme string // "bearer" or "basic"
	params map[string]string
}

// Bounds on what a WWW-Authenticate answer may hold. Real registries send
// one challenge of a few hundred bytes; anything near these is a stranger
// testing us, and is refused rather than parsed.
const (
	maxChallengeBytes  = 8 << 10 // all WWW-Authenticate values together
	maxChallenges      = 8
	maxChallengeParams = 16
)

// errChallengeTooLarge refuses a WWW-Authenticate answer past the bounds.
var errChallengeTooLarge = fmt.Errorf("WWW-Authenticate larger than %d bytes, %d challenges or %d parameters",
	maxChallengeBytes, maxChallenges, maxChallengeParams)

// parseChallenges reads WWW-Authenticate values such as
// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`.
// Quoted values may contain commas (a scope list), so this is a small
// tokenizer rather than a split. It reads each byte once, so its cost is
// linear in the header's size, and it refuses a header past the bounds
// above before reading it.
func parseChallenges(values []string) ([]challenge, error) {
	total := 0
	for _, v := range values {
		total += len(v)
	}
	if total > maxChallengeBytes {
		return nil, errChallengeTooLarge
	}
	var out []challenge
	for _, s := range values {
		i, n := 0, len(s)
		for i < n {
			for i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == ',') {
				i++
			}
			start := i
			for i < n && s[i] != ' ' && s[i] != '\t' && s[i] != ',' && s[i] != '=' && s[i] != '"' {
				i++
			}
			tok := s[start:i]
			if tok == "" {
				if i < n {
					i++ // a stray '=' or '"': skip it
				}
				continue
			}
			for i < n && (s[i] == ' ' || s[i] == '\t') {
				i++
			}
			if i >= n || s[i] != '=' {
				// Not followed by '=': the next challenge's scheme.
				if len(out) == maxChallenges {
					return nil, errChallengeTooLarge
				}
				out = append(out, challenge{scheme: strings.ToLower(tok), params: map[string]string{}})
				continue
			}
			i++ // '='
			for i < n && (s[i] == ' ' || s[i] == '\t') {
				i++
			}
			var val string
			if i < n && s[i] == '"' {
				var b strings.Builder
				for i++; i < n && s[i] != '"'; i++ {
					if s[i] == '\\' && i+1 < n {
						i++
					}
					b.WriteByte(s[i])
				}
				i++ // the closing quote, or past the end
				val = b.String()
			} else {
				start := i
				for i < n && s[i] != ',' && s[i] != ' ' && s[i] != '\t' {
					i++
				}
				val = s[start:i]
			}
			if len(out) == 0 {
				continue // a parameter before any scheme belongs to nothing
			}
			ch := out[len(out)-1]
			if len(ch.params) == maxChallengeParams {
				return nil, errChallengeTooLarge
			}
			ch.params[strings.ToLower(tok)] = val
		}
	}
	return out, nil
}

// credential is what is sent to one host for one repository.
type credential struct {
	header  string    // the Authorization value
	expires time.Time // zero for basic credentials
}

func (c credential) valid(now time.Time) bool {
	return c.header != "" && (c.expires.IsZero() || now.Before(c.expires))
}

// authKey names a credential: the origin (scheme://host[:port]) it is
// sent to, and the repository it is scoped to. The scheme is part of the
// key, so a credential earned over https is never sent over plain http to
// the same host.
type authKey struct{ origin, repo string }

// originOf is the scheme://host[:port] a credential is kept for.
func originOf(u *url.URL) string { return u.Scheme + "://" + u.Host }

// authorizer keeps the credentials of one upstream: bearer tokens per host
// and repository scope, reused until shortly before they expire, and basic
// credentials for hosts that ask for them.
//
// Credentials (username and password) are only ever sent to the upstream's
// own host and to a token realm that host named. A redirect target that
// challenges on its own (registry.k8s.io's backends do) gets anonymous
// tokens from its realm, never our credentials: it is another party.
type authorizer struct {
	origin    string // scheme://host[:port] of the configured remote
	hostname  string // the remote's host name, without port
	secure    bool   // the remote is https: nothing secret goes over plain http
	username  string
	password  string
	transport http.RoundTripper
	ua        string
	timeout   time.Duration
	refused   func(host, reason string)
	now       func() time.Time

	mu      sync.Mutex
	creds   map[authKey]*authEntry
	tick    uint64
	realms  map[string]challenge // host -> its last bearer challenge, to fetch tokens before a 401
	fetches singleflight.Group
}

type authEntry struct {
	cred credential
	used uint64
}

func newAuthorizer(origin *url.URL, username, password string, transport http.RoundTripper, ua string, timeout time.Duration) *authorizer {
	return &authorizer{
		timeout:   timeout,
		origin:    originOf(origin),
		hostname:  origin.Hostname(),
		secure:    origin.Scheme == "https",
		username:  username,
		password:  password,
		transport: transport,
		ua:        ua,
		refused:   func(string, string) {},
		now:       time.Now,
		creds:     map[authKey]*authEntry{},
		realms:    map[string]challenge{},
	}
}

// header returns the Authorization value to send to host (an origin,
// scheme://host[:port]) for repo, or "". Nothing is sent over plain http
// for an https remote.
// For the upstream's own host a token is fetched before the first request of
// a repository once the host's realm is known, saving the 401 round trip.
func (a *authorizer) header(ctx context.Context, host, repo string) (string, error) {
	if a.secure && strings.HasPrefix(host, "http://") {
		return "", nil
	}
	key := authKey{host, repo}
	now := a.now()
	a.mu.Lock()
	if e, ok := a.creds[key]; ok && e.cred.valid(now) {
		a.tick++
		e.used = a.tick
		a.mu.Unlock()
		return e.cred.header, nil
	}
	ch, known := a.realms[host]
	a.mu.Unlock()
	if !known || host != a.origin || repo == "" {
		return "", nil
	}
	cred, err := a.fetch(ctx, host, repo, ch)
	if err != nil {
		return "", err
	}
	return cred.header, nil
}

// answer reacts to a 401 from host: it obtains the credential the challenge
// asks for. ok is false when there is nothing more to try.
func (a *authorizer) answer(ctx context.Context, host, repo string, resp *http.Response) (bool, error) {
	a.invalidate(host, repo)
	if a.secure && strings.HasPrefix(host, "http://") {
		// Never reached through send, which refuses the downgrade; kept
		// so that no path can earn a credential over plain http.
		return false, nil
	}
	chs, err := parseChallenges(resp.Header.Values("WWW-Authenticate"))
	if err != nil {
		return false, &Error{Op: "authenticate", Cause: CauseBadContent, Status: resp.StatusCode, Err: err}
	}
	for _, ch := range chs {
		switch ch.scheme {
		case "bearer":
			if ch.params["realm"] == "" {
				continue
			}
			a.mu.Lock()
			a.realms[host] = ch
			a.mu.Unlock()
			if _, err := a.fetch(ctx, host, repo, ch); err != nil {
				return false, err
			}
			return true, nil
		case "basic":
			if host != a.origin || a.username == "" {
				continue
			}
			raw := base64.StdEncoding.EncodeToString([]byte(a.username + ":" + a.password))
			a.store(authKey{host, repo}, credential{header: "Basic " + raw})
			return true, nil
		}
	}
	return false, nil
}

// invalidate drops a credential the host refused.
func (a *authorizer) invalidate(host, repo string) {
	a.mu.Lock()
	delete(a.creds, authKey{host, repo})
	a.mu.Unlock()
}

func (a *authorizer) store(key authKey, c credential) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.creds[key]; !ok && len(a.creds) >= maxAuthEntries {
		var oldest authKey
		min := ^uint64(0)
		for k, e := range a.creds {
			if e.used < min {
				oldest, min = k, e.used
			}
		}
		delete(a.creds, oldest)
	}
	a.tick++
	a.creds[key] = &authEntry{cred: c, used: a.tick}
}

// fetch gets a bearer token for repo on host. Concurrent requests for the
// same repository share one token request.
func (a *authorizer) fetch(ctx context.Context, host, repo string, ch challenge) (credential, error) {
	// On the upstream's own host the scope is ours to name, so a realm
	// learned from one repository serves the next. Elsewhere (a redirect
	// target) the repository may live under another name: its challenge
	// says which.
	scope := ch.params["scope"]
	if host == a.origin && repo != "" {
		scope = "repository:" + repo + ":pull"
	}
	done := a.fetches.DoChan(host+"\x00"+repo, func() (any, error) {
		// Detached from the first caller: the others waiting share this
		// token, and one client leaving must not fail them all.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
		defer cancel()
		tok, err := a.requestToken(fctx, host, ch.params["realm"], ch.params["service"], scope)
		if err != nil {
			return credential{}, err
		}
		a.store(authKey{host, repo}, tok)
		return tok, nil
	})
	// Each caller waits no longer than its own deadline, though the shared
	// fetch runs on: a request that joins a fetch begun earlier, or starts
	// one late in its bound (after redirects), must still answer within
	// 2x timeout of its start, however slowly the token drips.
	select {
	case r := <-done:
		if r.Err != nil {
			return credential{}, r.Err
		}
		return r.Val.(credential), nil
	case <-ctx.Done():
		return credential{}, classify("authenticate", fmt.Errorf("wait for a token from %s: %w", host, ctx.Err()))
	}
}

// isLoopback reports a host name or address that never leaves the machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type tokenResponse struct {
	Token       string    `json:"token"`
	AccessToken string    `json:"access_token"`
	ExpiresIn   int64     `json:"expires_in"`
	IssuedAt    time.Time `json:"issued_at"`
}

// requestToken runs the token protocol's GET. Credentials go only to a realm
// named by the upstream's own host, and only over https, or, for a plain-HTTP
// remote, to the same host name: a plain-HTTP realm elsewhere would see the
// password in clear. An https remote's realm on plain http is refused.
func (a *authorizer) requestToken(ctx context.Context, host, realm, service, scope string) (credential, error) {
	ru, err := url.Parse(realm)
	if err != nil || (ru.Scheme != "https" && ru.Scheme != "http") || ru.Host == "" {
		return credential{}, &Error{Op: "authenticate", Cause: CauseAuth, Err: errors.New("unusable token realm")}
	}
	if a.secure && ru.Scheme == "http" {
		// A token asked for in clear can be read and replayed by anyone
		// on the path, and an https remote promised better.
		a.refused(ru.Host, RefusedDowngrade)
		return credential{}, &Error{Op: "authenticate", Cause: CauseUnreachable,
			Err: &HopRefused{Host: ru.Host, Reason: RefusedDowngrade}}
	}
	q := ru.Query()
	if service != "" {
		q.Set("service", service)
	}
	if scope != "" {
		q.Set("scope", scope)
	}
	ru.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ru.String(), nil)
	if err != nil {
		return credential{}, err
	}
	req.Header.Set("User-Agent", a.ua)
	withheld := false
	if host == a.origin && a.username != "" {
		if ru.Scheme == "https" || ru.Hostname() == a.hostname || (isLoopback(ru.Hostname()) && isLoopback(a.hostname)) {
			req.SetBasicAuth(a.username, a.password)
		} else {
			withheld = true
		}
	}
	resp, err := a.transport.RoundTrip(req)
	if err != nil {
		return credential{}, classify("authenticate", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := statusError("authenticate", resp)
		var ue *Error
		if errors.As(err, &ue) && ue.Cause != CauseRateLimited && ue.Cause != CauseServerError {
			// A token service that refuses is an auth failure, whatever
			// its status: a 404 from it does not mean the image is gone.
			ue.Cause = CauseAuth
			if withheld {
				ue.Err = fmt.Errorf("credentials withheld from the plain-HTTP realm %s on another host: %w", ru.Host, ue.Err)
			}
		}
		return credential{}, err
	}
	// Read whole before it is decoded: a token answer cut off by the
	// deadline is a timeout, not garbage from the token service.
	body, err := readSmall(resp, "authenticate", 1<<20)
	if err != nil {
		return credential{}, err
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return credential{}, badContent("authenticate", "decode token response: %w", err)
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if err := checkToken(tok); err != nil {
		return credential{}, err
	}
	life := defaultTokenLifetime
	if tr.ExpiresIn > 0 {
		life = time.Duration(tr.ExpiresIn) * time.Second
	}
	// Renew shortly before expiry, so that a request is not sent with a
	// token that dies on the way: a tenth of the lifetime, at least 5 s.
	margin := max(life/10, 5*time.Second)
	if margin > life/2 {
		margin = life / 2
	}
	issued := a.now()
	return credential{header: "Bearer " + tok, expires: issued.Add(life - margin)}, nil
}
