package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// noNetwork fails a test that sends anything: a credential lookup for an
// origin that holds none must not go and fetch one.
type noNetwork struct{ t *testing.T }

func (n noNetwork) RoundTrip(r *http.Request) (*http.Response, error) {
	n.t.Errorf("unexpected request to %s", r.URL.Host)
	return nil, errors.New("no network in this test")
}

// A credential earned at https://h:P, Basic or bearer, is never sent to
// http://h:P: same host, same port, only the scheme differs, as when a
// TLS-terminating balancer with a wrong X-Forwarded-Proto redirects to
// plain http. Credentials are keyed by origin, scheme included, whichever
// scheme the remote itself has.
func TestCredentialsNeverCrossToPlainHTTPOnTheSamePort(t *testing.T) {
	ctx := context.Background()
	secure, _ := url.Parse("https://registry.example:5000/v2/")
	plain, _ := url.Parse("http://registry.example:5000/v2/")
	for _, remote := range []*url.URL{secure, plain} {
		a := newAuthorizer(remote, "puller", "s3cret", noNetwork{t}, "multiproxy/test", time.Second)
		from, to := originOf(secure), originOf(plain)

		// Basic, as the https origin's own 401 asks for it.
		resp := &http.Response{StatusCode: http.StatusUnauthorized, Header: http.Header{}}
		resp.Header.Set("WWW-Authenticate", `Basic realm="registry"`)
		if ok, err := a.answer(ctx, from, "team/basic", resp); err != nil || (remote == secure && !ok) {
			t.Fatalf("remote %s: answer the https Basic challenge: %v, %v", remote, ok, err)
		}
		// A bearer token, as a token realm would have issued it, and that
		// realm, so that nothing is fetched for the https origin either.
		a.store(authKey{from, "team/bearer"}, credential{header: "Bearer tok", expires: time.Now().Add(time.Hour)})
		a.realms[from] = challenge{scheme: "bearer", params: map[string]string{"realm": "https://registry.example:5000/token"}}

		for _, repo := range []string{"team/basic", "team/bearer"} {
			got, err := a.header(ctx, from, repo)
			if err != nil {
				t.Fatalf("remote %s: header for %s at %s: %v", remote, repo, from, err)
			}
			if remote == secure && got == "" {
				t.Fatalf("remote %s: no credential for %s at %s: the case proves nothing", remote, repo, from)
			}
			if got, err := a.header(ctx, to, repo); got != "" || err != nil {
				t.Errorf("remote %s: %s's credential earned at %s is sent to %s: %q (%v)", remote, repo, from, to, got, err)
			}
		}
	}
}
