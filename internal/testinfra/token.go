package testinfra

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	// tokenService is the audience the registry accepts. It is not the
	// registry's host on purpose (Docker Hub's is "registry.docker.io" on
	// host registry-1.docker.io): a client must echo the challenge's
	// service rather than derive it.
	tokenService = "registry.testinfra"
	tokenIssuer  = "testinfra-token-issuer"
	// pusherAccount is the account that pushes when the registry has no
	// configured user, as anonymous tokens only pull.
	pusherAccount = "testinfra-pusher"

	defaultTokenTTL = 5 * time.Minute
)

// TokenIssuer is a registry's token server: the Docker/distribution token
// protocol on its own port, like auth.docker.io next to
// registry-1.docker.io. Its JWTs are ES256, signed by a generated
// key whose certificate travels in the x5c header and chains to the CA in
// the registry's rootcertbundle; distribution's own token access controller
// verifies them.
//
// GET /token?service=...&scope=... (scope may repeat, and may hold several
// space-separated scopes) is answered with {"token", "access_token",
// "expires_in", "issued_at"}; so is the OAuth2 form (POST /token with
// grant_type=password), which containerd tries first when it has
// credentials. Rules:
//   - With TokenOptions.Username set, only requests carrying those
//     credentials get a token; others get 401.
//   - Without it, anonymous requests get pull access to any repository,
//     like public images on Docker Hub. Push and delete need credentials:
//     an internal account, given by Credentials.
//   - Wrong credentials always get 401; a missing or foreign service 400.
//   - A token grants only the requested scopes it may grant, each for the
//     named repository alone. Its exp is issued_at + expires_in.
//
// Every request is recorded, so tests can assert token reuse. Methods are
// safe for concurrent use.
type TokenIssuer struct {
	svc           *Service
	ttl           time.Duration
	rootFile      string
	signer        jose.Signer
	users         map[string]string
	anonymousPull bool
	wrap          func(http.Handler) http.Handler

	mu       sync.Mutex
	requests []*TokenRequest
}

// TokenRequest is one request to the token endpoint.
type TokenRequest struct {
	Time    time.Time
	Method  string
	Service string
	// Scopes as requested, one element per scope.
	Scopes []string
	// Credentials says whether the request carried credentials (basic
	// auth, or a password grant); Account is their user name.
	Credentials bool
	Account     string
	// Status is the answer's HTTP status, 0 while still being handled.
	Status int
	// Granted lists the scopes the token holds, e.g.
	// "repository:team/app:pull".
	Granted []string
}

// TokenOptions configures a TokenIssuer.
type TokenOptions struct {
	// Dir is where the registry's rootcertbundle is written.
	Dir string
	// TTL is the lifetime of issued tokens, 5 minutes if zero, rounded up
	// to whole seconds.
	TTL time.Duration
	// Username and Password, when Username is non-empty, are the only
	// credentials that get a token; anonymous requests get 401.
	Username, Password string
	// Wrap, if set, wraps the issuer's handler (e.g. with faults).
	Wrap func(http.Handler) http.Handler
	// TLS, if set, makes the issuer serve HTTPS.
	TLS *tls.Config
}

// NewTokenIssuer makes a token issuer on a free 127.0.0.1 port, not
// serving until Start.
func NewTokenIssuer(opts TokenOptions) (*TokenIssuer, error) {
	svc, err := NewService(opts.TLS)
	if err != nil {
		return nil, fmt.Errorf("token issuer: %w", err)
	}
	ti := &TokenIssuer{
		svc:      svc,
		ttl:      opts.TTL,
		rootFile: filepath.Join(opts.Dir, "token-root.pem"),
		wrap:     opts.Wrap,
	}
	if ti.ttl <= 0 {
		ti.ttl = defaultTokenTTL
	}
	if opts.Username != "" {
		ti.users = map[string]string{opts.Username: opts.Password}
	} else {
		ti.users = map[string]string{pusherAccount: RandomHex(16)}
		ti.anonymousPull = true
	}

	caPEM, leafDER, key, err := newTokenSigningCert()
	if err != nil {
		return nil, fmt.Errorf("generate token signing certificate: %w", err)
	}
	if err := os.WriteFile(ti.rootFile, caPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write token root certificate: %w", err)
	}
	// The leaf goes in x5c rather than being trusted directly, as with
	// Docker Hub: the registry trusts a CA, so keys can rotate under it.
	ti.signer, err = jose.NewSigner(
		jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(leafDER)}),
	)
	if err != nil {
		return nil, fmt.Errorf("token signer: %w", err)
	}
	return ti, nil
}

// newTokenSigningCert makes a CA (the registry's rootcertbundle) and a
// signing certificate under it.
func newTokenSigningCert() (caPEM, leafDER []byte, key *ecdsa.PrivateKey, err error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          RandomSerial(),
		Subject:               pkix.Name{CommonName: "multiproxy testinfra token CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: RandomSerial(),
		Subject:      pkix.Name{CommonName: tokenIssuer},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	leafDER, err = x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), leafDER, key, nil
}

// URL is the token realm, e.g. "http://localhost:PORT/token". It names
// localhost rather than 127.0.0.1; see the package documentation.
func (ti *TokenIssuer) URL() string { return ti.svc.NamedURL() + "/token" }

// Host is the issuer's "127.0.0.1:port".
func (ti *TokenIssuer) Host() string { return ti.svc.Addr() }

// Service is the service (token audience) the registry's challenges name.
func (ti *TokenIssuer) Service() string { return tokenService }

// Issuer is the iss claim of issued tokens, which the registry's token
// configuration names.
func (ti *TokenIssuer) Issuer() string { return tokenIssuer }

// RootFile is the PEM CA the issuer's signing certificates chain to: the
// registry's rootcertbundle.
func (ti *TokenIssuer) RootFile() string { return ti.rootFile }

// Start serves on the issuer's address, again if it was stopped; a no-op
// while serving.
func (ti *TokenIssuer) Start() error { return ti.svc.Start(ti.Handler()) }

// Stop closes the issuer's port and connections and waits for its
// handlers; a no-op while stopped. Its keys survive for the next Start.
func (ti *TokenIssuer) Stop() error { return ti.svc.Stop() }

// TTL is the lifetime of issued tokens.
func (ti *TokenIssuer) TTL() time.Duration { return ti.ttl }

// Count is the number of token requests so far, granted or not.
func (ti *TokenIssuer) Count() int {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	return len(ti.requests)
}

// Requests lists the token requests so far, in arrival order.
func (ti *TokenIssuer) Requests() []TokenRequest {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	out := make([]TokenRequest, len(ti.requests))
	for i, r := range ti.requests {
		out[i] = *r
		out[i].Scopes = slices.Clone(r.Scopes)
		out[i].Granted = slices.Clone(r.Granted)
	}
	return out
}

// ResetCounts forgets recorded requests.
func (ti *TokenIssuer) ResetCounts() {
	ti.mu.Lock()
	ti.requests = nil
	ti.mu.Unlock()
}

// Credentials returns the account whose credentials authorise pushing.
func (ti *TokenIssuer) Credentials() (user, password string) {
	for u, p := range ti.users {
		return u, p
	}
	return "", ""
}

// Handler is the token endpoint (GET or POST /token), for a server that
// also answers for the issuer, as a front naming a realm on its own host.
func (ti *TokenIssuer) Handler() http.Handler {
	var h http.Handler = http.HandlerFunc(ti.serveToken)
	if ti.wrap != nil {
		h = ti.wrap(h)
	}
	return h
}

func (ti *TokenIssuer) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/token" {
		http.NotFound(w, r)
		return
	}
	var (
		params         = r.URL.Query()
		user, password string
		hasCreds       bool
	)
	switch r.Method {
	case http.MethodGet:
		user, password, hasCreds = r.BasicAuth()
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			tokenError(w, http.StatusBadRequest, "unparseable form: "+err.Error())
			return
		}
		params = r.PostForm
		if params.Get("grant_type") != "password" {
			// Refresh tokens are not issued, so none can come back.
			tokenError(w, http.StatusBadRequest, "unsupported grant_type "+params.Get("grant_type"))
			return
		}
		user, password, hasCreds = params.Get("username"), params.Get("password"), true
	default:
		w.Header().Set("Allow", "GET, POST")
		tokenError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}

	var scopes []string
	for _, s := range params["scope"] {
		scopes = append(scopes, strings.Fields(s)...)
	}
	rec := &TokenRequest{
		Time:        time.Now(),
		Method:      r.Method,
		Service:     params.Get("service"),
		Scopes:      scopes,
		Credentials: hasCreds,
		Account:     user,
	}
	ti.mu.Lock()
	ti.requests = append(ti.requests, rec)
	ti.mu.Unlock()
	status, granted := ti.answer(w, params.Get("service"), scopes, user, password, hasCreds)
	ti.mu.Lock()
	rec.Status, rec.Granted = status, granted
	ti.mu.Unlock()
}

func (ti *TokenIssuer) answer(w http.ResponseWriter, service string, scopes []string, user, password string, hasCreds bool) (int, []string) {
	authenticated := false
	if hasCreds {
		want, ok := ti.users[user]
		if !ok || subtle.ConstantTimeCompare([]byte(want), []byte(password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+ti.URL()+`"`)
			tokenError(w, http.StatusUnauthorized, "incorrect username or password")
			return http.StatusUnauthorized, nil
		}
		authenticated = true
	} else if !ti.anonymousPull {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+ti.URL()+`"`)
		tokenError(w, http.StatusUnauthorized, "authentication required")
		return http.StatusUnauthorized, nil
	}
	if service != tokenService {
		// An audience the registry would reject makes a client loop on
		// 401s; failing here says why.
		tokenError(w, http.StatusBadRequest, fmt.Sprintf("unknown service %q, want %q", service, tokenService))
		return http.StatusBadRequest, nil
	}

	var (
		access  []*token.ResourceActions
		granted []string
	)
	for _, s := range scopes {
		ra, ok := grantScope(s, authenticated)
		if !ok {
			continue
		}
		access = append(access, ra)
		granted = append(granted, ra.Type+":"+ra.Name+":"+strings.Join(ra.Actions, ","))
	}

	// Whole seconds, so that exp is exactly issued_at + expires_in.
	issued := time.Now().Truncate(time.Second)
	ttl := int64((ti.ttl + time.Second - 1) / time.Second)
	subject := ""
	if authenticated {
		subject = user
	}
	claims := token.ClaimSet{
		Issuer:     tokenIssuer,
		Subject:    subject,
		Audience:   token.AudienceList{service},
		Expiration: issued.Unix() + ttl,
		NotBefore:  issued.Unix(),
		IssuedAt:   issued.Unix(),
		JWTID:      RandomHex(16),
		Access:     access,
	}
	raw, err := jwt.Signed(ti.signer).Claims(claims).Serialize()
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "sign token: "+err.Error())
		return http.StatusInternalServerError, nil
	}
	body, err := json.Marshal(map[string]any{
		"token":        raw,
		"access_token": raw,
		"expires_in":   ttl,
		"issued_at":    issued.UTC().Format(time.RFC3339),
	})
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
	return http.StatusOK, granted
}

// grantScope parses "type[(class)]:name:action[,action]" (name may contain
// colons, e.g. a host:port) and keeps the actions the caller may have.
func grantScope(scope string, authenticated bool) (*token.ResourceActions, bool) {
	typ, rest, ok := strings.Cut(scope, ":")
	i := strings.LastIndex(rest, ":")
	if !ok || i <= 0 {
		return nil, false
	}
	name, actions := rest[:i], strings.Split(rest[i+1:], ",")
	class := ""
	if j := strings.Index(typ, "("); j > 0 && strings.HasSuffix(typ, ")") {
		typ, class = typ[:j], typ[j+1:len(typ)-1]
	}

	var allowed []string
	switch {
	case typ == "repository" && authenticated:
		allowed = []string{"pull", "push", "delete"}
	case typ == "repository":
		allowed = []string{"pull"}
	case typ == "registry" && name == "catalog" && authenticated:
		allowed = []string{"*"}
	}
	var keep []string
	for _, a := range actions {
		if slices.Contains(allowed, a) && !slices.Contains(keep, a) {
			keep = append(keep, a)
		}
	}
	if len(keep) == 0 {
		return nil, false
	}
	return &token.ResourceActions{Type: typ, Class: class, Name: name, Actions: keep}, true
}

// tokenError answers in the shape Docker's token servers use.
func tokenError(w http.ResponseWriter, status int, details string) {
	body, err := json.Marshal(map[string]string{"details": details})
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// RandomSerial is a random certificate serial number, as RFC 5280 wants
// them unique per CA.
func RandomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}
