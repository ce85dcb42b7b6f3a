package testsupport

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
}

// getToken asks r's issuer for scopes, with basic credentials if user is
// set, and returns the status and the decoded answer.
func getToken(t *testing.T, r *Registry, service, user, password string, scopes ...string) (int, tokenResponse) {
	t.Helper()
	q := url.Values{"scope": scopes}
	if service != "" {
		q.Set("service", service)
	}
	req, err := http.NewRequest(http.MethodGet, r.Tokens().URL()+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := r.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	defer resp.Body.Close()
	var tr tokenResponse
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
			t.Fatalf("token response: %v", err)
		}
	}
	return resp.StatusCode, tr
}

// fetchToken is getToken for the registry's service that must succeed.
func fetchToken(t *testing.T, r *Registry, user, password string, scopes ...string) tokenResponse {
	t.Helper()
	status, tr := getToken(t, r, r.Tokens().Service(), user, password, scopes...)
	if status != http.StatusOK {
		t.Fatalf("token for %v: status %d", scopes, status)
	}
	return tr
}

type jwtClaims struct {
	Iss    string `json:"iss"`
	Sub    string `json:"sub"`
	Aud    any    `json:"aud"`
	Exp    int64  `json:"exp"`
	Iat    int64  `json:"iat"`
	Access []struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	} `json:"access"`
}

func decodeClaims(t *testing.T, raw string) (header map[string]any, claims jwtClaims) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a compact JWS", raw)
	}
	for i, v := range []any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims
}

// registryGet sends a GET with an optional bearer token, not following
// redirects.
func registryGet(t *testing.T, r *Registry, path, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// Without it distribution answers 404 for an OCI manifest.
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := noRedirects(r).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestTokenChallengesAndScopes(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{Token: true, TokenTTL: 90 * time.Second})
	ti := r.Tokens()
	if !strings.HasPrefix(ti.URL(), "http://localhost:") || !strings.HasSuffix(ti.URL(), "/token") {
		t.Fatalf("realm %q", ti.URL())
	}
	PushImage(t, r, "team/a:1", 1, 1024)
	PushImage(t, r, "team/b:1", 1, 1024)
	PushImage(t, r, "team/c:1", 1, 1024)
	ti.ResetCounts()

	base := `Bearer realm="` + ti.URL() + `",service="` + ti.Service() + `"`
	resp := registryGet(t, r, "/v2/", "")
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != base {
		t.Fatalf("GET /v2/: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), base)
	}
	resp = registryGet(t, r, "/v2/team/a/manifests/1", "")
	if want := base + `,scope="repository:team/a:pull"`; resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("manifest challenge %q, want %q", resp.Header.Get("WWW-Authenticate"), want)
	}

	// Anonymous: pull only, and only for the repositories asked for; the
	// second scope arrives as a space-separated list, as OAuth2 has it.
	tok := fetchToken(t, r, "", "", "repository:team/a:pull,push", "repository:team/b:pull repository:team/b:delete")
	if tok.Token == "" || tok.Token != tok.AccessToken || tok.ExpiresIn != 90 {
		t.Fatalf("token response %+v", tok)
	}
	hdr, claims := decodeClaims(t, tok.Token)
	issued, err := time.Parse(time.RFC3339, tok.IssuedAt)
	if err != nil || issued.Unix() != claims.Iat || claims.Exp != claims.Iat+tok.ExpiresIn {
		t.Fatalf("issued_at %q (%v), claims iat %d exp %d, expires_in %d", tok.IssuedAt, err, claims.Iat, claims.Exp, tok.ExpiresIn)
	}
	if hdr["alg"] != "ES256" || hdr["x5c"] == nil {
		t.Fatalf("JWS header %v", hdr)
	}
	var granted []string
	for _, a := range claims.Access {
		granted = append(granted, a.Type+":"+a.Name+":"+strings.Join(a.Actions, ","))
	}
	if want := []string{"repository:team/a:pull", "repository:team/b:pull"}; !slices.Equal(granted, want) {
		t.Fatalf("granted %v, want %v", granted, want)
	}
	if aud, _ := claims.Aud.([]any); claims.Sub != "" || len(aud) != 1 || aud[0] != ti.Service() {
		t.Fatalf("anonymous token for %q, audience %v", claims.Sub, claims.Aud)
	}

	for path, want := range map[string]int{
		"/v2/":                   http.StatusOK,
		"/v2/team/a/manifests/1": http.StatusOK,
		"/v2/team/b/manifests/1": http.StatusOK,
		"/v2/team/c/manifests/1": http.StatusUnauthorized,
	} {
		resp := registryGet(t, r, path, tok.Token)
		if resp.StatusCode != want {
			t.Errorf("GET %s with the token: %d, want %d", path, resp.StatusCode, want)
		}
		if want == http.StatusUnauthorized && !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
			t.Errorf("GET %s: challenge %q lacks insufficient_scope", path, resp.Header.Get("WWW-Authenticate"))
		}
	}

	// Pushing needs credentials; RemoteOptions carries the pusher's.
	pusher, password := ti.Credentials()
	tok = fetchToken(t, r, pusher, password, "repository:team/c:pull,push")
	if _, claims := decodeClaims(t, tok.Token); claims.Sub != pusher || len(claims.Access) != 1 || !slices.Equal(claims.Access[0].Actions, []string{"pull", "push"}) {
		t.Fatalf("pusher token claims %+v", claims)
	}
	if status, _ := getToken(t, r, ti.Service(), pusher, "wrong", "repository:team/c:pull"); status != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d, want 401", status)
	}
	if status, _ := getToken(t, r, "", "", "", "repository:team/c:pull"); status != http.StatusBadRequest {
		t.Fatalf("no service: %d, want 400", status)
	}

	reqs := ti.Requests()
	if len(reqs) != ti.Count() || len(reqs) != 4 {
		t.Fatalf("%d requests recorded (Count %d), want 4: %+v", len(reqs), ti.Count(), reqs)
	}
	if reqs[0].Credentials || !reqs[1].Credentials || reqs[1].Account != pusher || reqs[2].Status != http.StatusUnauthorized {
		t.Fatalf("recorded %+v", reqs)
	}
	if want := []string{"repository:team/a:pull,push", "repository:team/b:pull", "repository:team/b:delete"}; !slices.Equal(reqs[0].Scopes, want) {
		t.Fatalf("recorded scopes %v, want %v", reqs[0].Scopes, want)
	}
}

func TestTokenRequiresConfiguredUser(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{Token: true, Username: "alice", Password: "s3cret"})
	ti := r.Tokens()
	if status, _ := getToken(t, r, ti.Service(), "", "", "repository:x:pull"); status != http.StatusUnauthorized {
		t.Fatalf("anonymous token request: %d, want 401", status)
	}
	if status, _ := getToken(t, r, ti.Service(), "alice", "wrong", "repository:x:pull"); status != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d, want 401", status)
	}
	tok := fetchToken(t, r, "alice", "s3cret", "repository:x:pull,push")
	if _, claims := decodeClaims(t, tok.Token); claims.Sub != "alice" || len(claims.Access) != 1 || len(claims.Access[0].Actions) != 2 {
		t.Fatalf("claims %+v", claims)
	}

	// The OAuth2 password grant, which containerd tries first.
	resp, err := r.HTTPClient().PostForm(ti.URL(), url.Values{
		"grant_type": {"password"}, "username": {"alice"}, "password": {"s3cret"},
		"service": {ti.Service()}, "scope": {"repository:x:pull"}, "client_id": {"test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var tr tokenResponse
	err = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || tr.AccessToken == "" {
		t.Fatalf("password grant: %d %v %+v", resp.StatusCode, err, tr)
	}
	reqs := ti.Requests()
	if last := reqs[len(reqs)-1]; last.Method != http.MethodPost || !last.Credentials || last.Account != "alice" {
		t.Fatalf("recorded %+v", last)
	}
}

func TestTokenExpiresOnTime(t *testing.T) {
	t.Parallel()
	r := StartRegistry(t, RegistryOptions{Token: true, TokenTTL: time.Second})
	PushImage(t, r, "short/app:1", 1, 1024)
	tok := fetchToken(t, r, "", "", "repository:short/app:pull")
	if tok.ExpiresIn != 1 {
		t.Fatalf("expires_in %d, want 1", tok.ExpiresIn)
	}
	if resp := registryGet(t, r, "/v2/short/app/manifests/1", tok.Token); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh token: %d", resp.StatusCode)
	}
	_, claims := decodeClaims(t, tok.Token)
	// Honoured for under TTL+1s after issue, well inside distribution's
	// 60 s leeway.
	time.Sleep(time.Until(time.Unix(claims.Exp+1, 0)) + 50*time.Millisecond)
	resp := registryGet(t, r, "/v2/short/app/manifests/1", tok.Token)
	if c := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(c, `error="invalid_token"`) || !strings.Contains(c, `scope="repository:short/app:pull"`) {
		t.Fatalf("expired token: %d %q", resp.StatusCode, c)
	}
}
