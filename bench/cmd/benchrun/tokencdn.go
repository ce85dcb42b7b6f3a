package main

// The token + CDN upstream: the reference `registry` binary as docker.io
// behaves, bearer tokens per repository from a separate token service and
// blob GETs answered 307 to a CDN on another host with a presigned URL that
// refuses Authorization. The registry does the real work (distribution's
// token access controller verifying our JWTs, its redirect storage
// middleware); the harness adds the token service, the CDN (serving the
// registry's storage directory) and, in the counting front, the URL
// signature that a real object store's presigning would add.
//
// internal/testsupport builds the same upstream in-process for the tests
// (token.go, cdn.go); this is a compact copy, since testsupport needs a
// testing.TB. Realms and CDN URLs name "localhost", not 127.0.0.1, for the
// reason given there: clients treat another hostname as another party
// (net/http drops Authorization on a redirect that leaves the hostname).
//
// The reference proxy gets a front of its own, refFront, whose challenges
// name a realm on the front's own address (/token, served by the same token
// service). distribution v3.1.2's proxy follows a bearer realm only on the
// remote's host:port or on the remote's registrable domain (realmAllowed in
// registry/proxy/proxyauth.go): auth.docker.io passes for
// registry-1.docker.io, but on loopback no two hosts share a registrable
// domain, and given localhost:PORT it sends no token at all and answers
// every pull 404 "unknown tag". refFront gives it what docker.io gives it: a
// realm its policy accepts. Everything else is the same upstream.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/go-containerregistry/pkg/authn"
)

const (
	tcService = "registry.bench.test" // the token audience; not the registry's host, as with Docker Hub
	tcIssuer  = "multiproxy-bench-token-issuer"
	tcPusher  = "bench-pusher"
	// blobStoragePrefix is where the filesystem driver keeps blob data; the
	// redirect middleware puts this path in its URLs.
	blobStoragePrefix = "/docker/registry/v2/blobs/"
)

// tokenCDN is the started token + CDN upstream.
type tokenCDN struct {
	reg      *proc
	regHost  string // 127.0.0.1:port of the registry itself (pushes go there)
	front    *front // counting front that signs CDN redirects; multiproxy and direct use front.url
	refFront *front // the same, with the realm on its own address; the reference uses it
	tokens   *tokenIssuer
	cdn      *cdnServer
}

func (t *tokenCDN) quiesce() {
	_ = t.front.quiesce(30 * time.Second)
	_ = t.refFront.quiesce(30 * time.Second)
	t.cdn.quiesce(30 * time.Second)
}

func (t *tokenCDN) close() {
	t.front.close()
	t.refFront.close()
	t.tokens.close()
	t.cdn.close()
}

// tokenCDNConfig is a plain registry with `auth: token` and the redirect
// storage middleware pointing at the CDN.
func tokenCDNConfig(root string, port int, realm, rootBundle, cdnBase string) string {
	return upstreamConfig(root, port) + fmt.Sprintf(`auth:
  token:
    realm: %s
    service: %s
    issuer: %s
    rootcertbundle: %s
middleware:
  storage:
    - name: redirect
      options:
        baseurl: %s/
`, realm, tcService, tcIssuer, rootBundle, cdnBase)
}

func startTokenCDN(dir, regBin string) (*tokenCDN, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	storage := filepath.Join(dir, "storage")
	tokens, err := startTokenIssuer(dir)
	if err != nil {
		return nil, err
	}
	cdn, err := startCDN(storage)
	if err != nil {
		tokens.close()
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		tokens.close()
		cdn.close()
		return nil, err
	}
	reg, base, err := startRegistryWant("upstream-tokencdn", dir, regBin,
		tokenCDNConfig(storage, port, tokens.realm, tokens.rootFile, cdn.base), port, http.StatusUnauthorized)
	if err != nil {
		tokens.close()
		cdn.close()
		return nil, err
	}
	sign := func(resp *http.Response) {
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode/100 == 3 {
			resp.Header.Set("Location", cdn.sign(loc))
		}
	}
	fr, err := startFront(base, sign, nil)
	if err != nil {
		reg.stop()
		tokens.close()
		cdn.close()
		return nil, err
	}
	refFr, err := startFront(base, func(resp *http.Response) {
		sign(resp)
		if c := resp.Header.Get("WWW-Authenticate"); c != "" {
			// The front keeps the client's Host: it is the front's address.
			resp.Header.Set("WWW-Authenticate", strings.Replace(c, `realm="`+tokens.realm+`"`,
				`realm="http://`+resp.Request.Host+`/token"`, 1))
		}
	}, http.HandlerFunc(tokens.serve))
	if err != nil {
		fr.close()
		reg.stop()
		tokens.close()
		cdn.close()
		return nil, err
	}
	return &tokenCDN{reg: reg, regHost: strings.TrimPrefix(base, "http://"), front: fr, refFront: refFr, tokens: tokens, cdn: cdn}, nil
}

// pusher pushes straight to the registry with the pusher account.
func (t *tokenCDN) pusher() *pusher {
	ps := newPusher(t.regHost)
	ps.auth = &authn.Basic{Username: tcPusher, Password: t.tokens.pushPass}
	return ps
}

// listenLocal serves h on a free 127.0.0.1 port.
func listenLocal(h http.Handler) (*http.Server, int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, 0, err
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, l.Addr().(*net.TCPAddr).Port, nil
}

func shutdown(srv *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
	}
}

// tokenIssuer is the Docker token protocol's GET form: anonymous callers get
// pull on the repositories they name, the pusher account pull and push.
// Tokens are ES256 JWTs whose signing certificate travels in x5c and chains
// to the registry's rootcertbundle, as distribution verifies them.
type tokenIssuer struct {
	srv      *http.Server
	realm    string
	rootFile string
	signer   jose.Signer
	pushPass string
	requests atomic.Int64
}

func startTokenIssuer(dir string) (*tokenIssuer, error) {
	caPEM, leafDER, key, err := tokenSigningCert()
	if err != nil {
		return nil, fmt.Errorf("token signing certificate: %w", err)
	}
	ti := &tokenIssuer{rootFile: filepath.Join(dir, "token-root.pem"), pushPass: randHex(16)}
	if err := os.WriteFile(ti.rootFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	ti.signer, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(leafDER)}))
	if err != nil {
		return nil, err
	}
	srv, port, err := listenLocal(http.HandlerFunc(ti.serve))
	if err != nil {
		return nil, err
	}
	ti.srv, ti.realm = srv, fmt.Sprintf("http://localhost:%d/token", port)
	return ti, nil
}

func (ti *tokenIssuer) close() { shutdown(ti.srv) }

// tokenSigningCert makes a CA (the registry's rootcertbundle) and an ES256
// signing certificate under it.
func tokenSigningCert() (caPEM, leafDER []byte, key *ecdsa.PrivateKey, err error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "multiproxy bench token CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, nil, nil, err
	}
	if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: tcIssuer},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if leafDER, err = x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey); err != nil {
		return nil, nil, nil, err
	}
	return pemCert(caDER), leafDER, key, nil
}

func pemCert(der []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString(der)
	var sb strings.Builder
	sb.WriteString("-----BEGIN CERTIFICATE-----\n")
	for len(b64) > 64 {
		sb.WriteString(b64[:64] + "\n")
		b64 = b64[64:]
	}
	sb.WriteString(b64 + "\n-----END CERTIFICATE-----\n")
	return []byte(sb.String())
}

type tokenAccess struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (ti *tokenIssuer) serve(w http.ResponseWriter, r *http.Request) {
	ti.requests.Add(1)
	if r.URL.Path != "/token" || r.Method != http.MethodGet {
		http.Error(w, "only GET /token", http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	user, pass, creds := r.BasicAuth()
	pusher := creds && user == tcPusher && hmac.Equal([]byte(pass), []byte(ti.pushPass))
	if creds && !pusher {
		http.Error(w, `{"details":"incorrect username or password"}`, http.StatusUnauthorized)
		return
	}
	if q.Get("service") != tcService {
		http.Error(w, `{"details":"unknown service"}`, http.StatusBadRequest)
		return
	}
	var access []tokenAccess
	for _, s := range q["scope"] {
		for _, sc := range strings.Fields(s) {
			typ, rest, ok := strings.Cut(sc, ":")
			i := strings.LastIndex(rest, ":")
			if !ok || typ != "repository" || i <= 0 {
				continue
			}
			var acts []string
			for _, a := range strings.Split(rest[i+1:], ",") {
				if (a == "pull" || (pusher && a == "push")) && !slices.Contains(acts, a) {
					acts = append(acts, a)
				}
			}
			if len(acts) > 0 {
				access = append(access, tokenAccess{Type: typ, Name: rest[:i], Actions: acts})
			}
		}
	}
	now := time.Now().Truncate(time.Second)
	ttl := int64(300)
	claims := map[string]any{"iss": tcIssuer, "sub": user, "aud": []string{tcService},
		"exp": now.Unix() + ttl, "nbf": now.Unix(), "iat": now.Unix(), "jti": randHex(16), "access": access}
	raw, err := jwt.Signed(ti.signer).Claims(claims).Serialize()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body, _ := json.Marshal(map[string]any{"token": raw, "access_token": raw, "expires_in": ttl,
		"issued_at": now.UTC().Format(time.RFC3339)})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// cdnServer serves the registry's storage read-only like an S3 presigned
// URL: a valid unexpired X-Expires/X-Signature pair is required, and any
// request carrying Authorization gets 400, as S3 answers a client that
// forwards the registry's token. It counts requests per blob digest.
type cdnServer struct {
	srv    *http.Server
	base   string // http://localhost:port
	root   string
	secret []byte

	inflight atomic.Int64
	mu       sync.Mutex
	gets     map[string]int64 // digest -> GETs received
	auth     int64            // requests carrying Authorization
	refused  int64            // requests answered 4xx
}

func startCDN(root string) (*cdnServer, error) {
	c := &cdnServer{root: root, secret: []byte(randHex(32)), gets: map[string]int64{}}
	srv, port, err := listenLocal(c)
	if err != nil {
		return nil, err
	}
	c.srv, c.base = srv, fmt.Sprintf("http://localhost:%d", port)
	return c, nil
}

func (c *cdnServer) close() { shutdown(c.srv) }

func (c *cdnServer) mac(p, exp string) string {
	m := hmac.New(sha256.New, c.secret)
	m.Write([]byte(p + "\n" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

// sign presigns location if it points at the CDN (valid 60 s).
func (c *cdnServer) sign(location string) string {
	if !strings.HasPrefix(location, c.base+"/") {
		return location
	}
	u, err := url.Parse(location)
	if err != nil {
		return location
	}
	exp := strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10)
	u.RawQuery = url.Values{"X-Expires": {exp}, "X-Signature": {c.mac(u.Path, exp)}}.Encode()
	return u.String()
}

// cdnCounts is a snapshot of the CDN's counters.
type cdnCounts struct {
	gets          map[string]int64
	auth, refused int64
}

func (c *cdnServer) counts() cdnCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := make(map[string]int64, len(c.gets))
	for k, v := range c.gets {
		g[k] = v
	}
	return cdnCounts{gets: g, auth: c.auth, refused: c.refused}
}

func (c *cdnServer) quiesce(max time.Duration) {
	deadline := time.Now().Add(max)
	for c.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cdnServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.inflight.Add(1)
	defer c.inflight.Add(-1)
	clean := path.Clean(r.URL.Path)
	dgst := ""
	if parts := strings.Split(strings.TrimPrefix(clean, blobStoragePrefix), "/"); strings.HasPrefix(clean, blobStoragePrefix) &&
		len(parts) == 4 && parts[3] == "data" {
		dgst = parts[0] + ":" + parts[2]
	}
	c.mu.Lock()
	if r.Method == http.MethodGet {
		c.gets[dgst]++
	}
	if r.Header.Get("Authorization") != "" {
		c.auth++
	}
	c.mu.Unlock()
	refuse := func(status int, code string) {
		c.mu.Lock()
		c.refused++
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code></Error>\n", code)
	}
	q := r.URL.Query()
	exp := q.Get("X-Expires")
	n, _ := strconv.ParseInt(exp, 10, 64)
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		refuse(http.StatusMethodNotAllowed, "MethodNotAllowed")
	case r.Header.Get("Authorization") != "":
		refuse(http.StatusBadRequest, "InvalidArgument") // "Only one auth mechanism allowed"
	case !hmac.Equal([]byte(q.Get("X-Signature")), []byte(c.mac(r.URL.Path, exp))):
		refuse(http.StatusForbidden, "SignatureDoesNotMatch")
	case time.Now().Unix() > n:
		refuse(http.StatusForbidden, "AccessDenied")
	case dgst == "":
		refuse(http.StatusNotFound, "NoSuchKey")
	default:
		f, err := os.Open(filepath.Join(c.root, filepath.FromSlash(clean)))
		if err != nil {
			refuse(http.StatusNotFound, "NoSuchKey")
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			refuse(http.StatusNotFound, "NoSuchKey")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"`+dgst+`"`)
		http.ServeContent(w, r, "", st.ModTime(), f) // sendfile on plain TCP
	}
}

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

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// cdnSide is what one system did at the token + CDN upstream over the
// repetitions of the cold pull.
type cdnSide struct {
	Reps   int      `json:"reps"`
	Failed int      `json:"failed_pulls"`
	Errors []string `json:"errors,omitempty"`
	// MinGets and MaxGets are the CDN GETs of one blob of the image (config
	// and layers) in one pull, over every blob and repetition; Exact counts
	// the repetitions in which every blob was GET from the CDN exactly once.
	MinGets int64 `json:"min_cdn_gets_per_blob"`
	MaxGets int64 `json:"max_cdn_gets_per_blob"`
	Exact   int   `json:"reps_every_blob_once"`
	// Auth is the CDN requests that carried Authorization, Refused those
	// the CDN answered 4xx, Tokens the token requests; all summed over reps.
	Auth    int64 `json:"cdn_requests_with_authorization"`
	Refused int64 `json:"cdn_requests_refused"`
	Tokens  int64 `json:"token_requests"`
}

func (s *cdnSide) fail(err string) {
	s.Failed++
	if !slices.Contains(s.Errors, err) && len(s.Errors) < 3 {
		s.Errors = append(s.Errors, err)
	}
}

// ok: every pull served, every blob fetched once from the CDN, no token
// leaked there.
func (s *cdnSide) ok() bool {
	return s.Reps > 0 && s.Failed == 0 && s.Exact == s.Reps && s.Auth == 0
}

func (s *cdnSide) String() string {
	st := "OK"
	if !s.ok() {
		st = "NOT OK"
	}
	return fmt.Sprintf("%s (%d/%d pulls served, every blob once via CDN in %d/%d, %s GETs/blob, %d with Authorization, %d refused, %d token requests)",
		st, s.Reps-s.Failed, s.Reps, s.Exact, s.Reps, s.getsText(), s.Auth, s.Refused, s.Tokens)
}

func (s *cdnSide) getsText() string {
	switch {
	case s.MinGets < 0:
		return "n/a"
	case s.MinGets == s.MaxGets:
		return strconv.FormatInt(s.MinGets, 10)
	default:
		return fmt.Sprintf("%d-%d", s.MinGets, s.MaxGets)
	}
}

// timeText is the time cell when some pulls failed.
func (s *cdnSide) timeText(med *float64) string {
	switch {
	case s.Failed == 0:
		return ""
	case s.Failed >= s.Reps:
		return "FAIL"
	default:
		return fmt.Sprintf("%s (%d/%d FAIL)", fmtVal(med), s.Failed, s.Reps)
	}
}

// setupTokenCDN starts the token + CDN upstream and pushes one fresh
// 3-layer image per repetition. A failure is a note: the row says why.
func (b *bench) setupTokenCDN() {
	t0 := time.Now()
	tc, err := startTokenCDN(filepath.Join(b.work, "upstream-tokencdn"), b.o.regBin)
	if err != nil {
		b.tcErr = "token + CDN upstream did not start: " + err.Error()
		b.note("%s", b.tcErr)
		return
	}
	b.tc = tc
	logf("token + CDN upstream: registry %s, token service %s, CDN %s, counting fronts %s, %s (reference)",
		tc.regHost, tc.tokens.realm, tc.cdn.base, tc.front.url, tc.refFront.url)
	ps := tc.pusher()
	for i := range b.p.reps {
		img, err := ps.push(fmt.Sprintf("bench/coldcdn-%d", i), "v1", []int64{b.p.layer, b.p.layer, b.p.layer}, nil)
		if err != nil {
			b.tcErr = "push to the token + CDN upstream: " + err.Error()
			b.note("%s", b.tcErr)
			return
		}
		b.coldImgCDN = append(b.coldImgCDN, img)
	}
	logf("pushed %d images to the token + CDN upstream in %.1f s", b.p.reps, time.Since(t0).Seconds())
}

// tokenCDNRun is the cold pull through the token + CDN upstream: a fresh
// multiproxy (one upstream) and a fresh reference proxy on it, and the
// direct pull (its own token, following the redirect). Systems alternate
// as in the other cold pulls. It counts, per pull, the CDN GETs of every
// blob and the CDN requests that carried Authorization. A system that
// fails is a FAIL in the table, never a harness failure.
func (b *bench) tokenCDNRun() {
	metric := fmt.Sprintf("cold pull of 3 x %s image, token + CDN upstream", mib(b.p.layer))
	key := "cold_image_cdn"
	if b.tc == nil || len(b.coldImgCDN) < b.p.reps {
		b.addRow(&row{Key: key, Metric: metric, Unit: "s", BaseName: "direct", isTime: true,
			MPText: "n/a", RefText: "n/a", BaseText: "n/a", Note: "not measured: " + b.tcErr})
		return
	}
	tc := b.tc
	logf("%s: %d reps", metric, b.p.reps)
	dir := filepath.Join(b.work, "tokencdn")
	side := map[string]*cdnSide{}
	for _, n := range []string{"multiproxy", "reference", "direct"} {
		side[n] = &cdnSide{MinGets: -1}
	}
	var systems []*sys
	if mp, err := startMultiproxy(filepath.Join(dir, "mp"), b.o.mpBin, tc.front.url, 1, b.p.timeout, ""); err != nil {
		side["multiproxy"].fail("start: " + err.Error())
	} else {
		defer mp.p.stop()
		systems = append(systems, &sys{name: "multiproxy", base: mp.bases[0], c: newClient(), pids: mp.pids})
	}
	if port, err := freePort(); err != nil {
		side["reference"].fail("start: " + err.Error())
	} else {
		d := filepath.Join(dir, "ref")
		p, base, err := startRegistry("ref-tokencdn", d, b.o.regBin, referenceConfig(filepath.Join(d, "storage"), port, tc.refFront.url), port)
		if err != nil {
			side["reference"].fail("start: " + err.Error())
		} else {
			defer p.stop()
			systems = append(systems, &sys{name: "reference", base: base, c: newClient(), pids: func() []int { return []int{p.pid()} }})
		}
	}
	systems = append(systems, &sys{name: "direct", base: tc.front.url, c: newBearerClient(strings.TrimPrefix(tc.front.url, "http://"))})
	for _, s := range side {
		if s.Failed > 0 { // did not start: every rep fails
			s.Reps, s.Failed = b.p.reps, b.p.reps
		}
	}

	// A proxy that hangs on a redirect must not hang the harness.
	limit := 20*time.Second + time.Duration(3*b.p.layer/10e6)*time.Second
	tm, cpu := series{}, series{}
	for rep := range b.p.reps {
		img := b.coldImgCDN[rep]
		blobs := append([]string{img.config}, img.layers...)
		for _, s := range order(systems, rep) {
			sd := side[s.name]
			sd.Reps++
			tc.quiesce()
			flushDirty()
			before, tok0 := tc.cdn.counts(), tc.tokens.requests.Load()
			var c0 float64
			if s.pids != nil {
				c0, _ = cpuSeconds(s.pids())
			}
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			d, _, err := pullImage(ctx, s.c, s.base, img.repo, img.tag)
			cancel()
			if err != nil {
				sd.fail(err.Error())
			} else {
				tm.put(s.name, rep, d.Seconds())
				if s.pids != nil {
					if c1, err := cpuSeconds(s.pids()); err == nil {
						cpu.put(s.name, rep, c1-c0)
					}
				}
			}
			// Fills finishing after the client gave up still count.
			tc.quiesce()
			after := tc.cdn.counts()
			exact := true
			for _, dg := range blobs {
				n := after.gets[dg] - before.gets[dg]
				if sd.MinGets < 0 || n < sd.MinGets {
					sd.MinGets = n
				}
				sd.MaxGets = max(sd.MaxGets, n)
				exact = exact && n == 1
			}
			if exact {
				sd.Exact++
			}
			sd.Auth += after.auth - before.auth
			sd.Refused += after.refused - before.refused
			sd.Tokens += tc.tokens.requests.Load() - tok0
		}
	}
	b.tcSides = side

	mpS, refS, dirS := side["multiproxy"], side["reference"], side["direct"]
	var notes []string
	for _, n := range []string{"multiproxy", "reference", "direct"} {
		s := side[n]
		if len(s.Errors) > 0 {
			notes = append(notes, fmt.Sprintf("%s failed %d/%d: %s", n, s.Failed, s.Reps, strings.Join(s.Errors, "; ")))
		}
	}
	note := "the reference registry with auth: token (ES256 JWTs from a token service on another host) and the redirect " +
		"storage middleware: blob GETs answered 307 to a presigned-URL CDN on another host that refuses Authorization, like docker.io; " +
		"direct = a client with its own anonymous token, following the redirect; every digest verified; " +
		"the reference sees the token realm on its remote's own address, as its realm policy needs (see bench/README.md)"
	if len(notes) > 0 {
		note += "; " + strings.Join(notes, "; ")
	}
	r := b.addRow(&row{Key: key, Metric: metric, Unit: "s", BaseName: "direct", series: tm, isTime: true, Note: note})
	r.MPText, r.RefText, r.BaseText = mpS.timeText(r.MP), refS.timeText(r.Ref), dirS.timeText(r.Base)
	b.addRow(&row{Key: key + "_cpu", Metric: "  proxy CPU (utime+stime) for that pull", Unit: "CPU-s", series: cpu, isTime: true})

	f := func(v int64) *float64 { x := float64(v); return &x }
	gets := b.addRow(&row{Key: key + "_gets", Metric: "  CDN GETs per blob in that pull (want 1 each)", Unit: "GETs", BaseName: "direct",
		MP: f(mpS.MaxGets), Ref: f(refS.MaxGets), Base: f(dirS.MaxGets),
		MPText: mpS.getsText(), RefText: refS.getsText(), BaseText: dirS.getsText(),
		Note: fmt.Sprintf("min-max over the config and 3 layers of every rep; every blob exactly once in: multiproxy %d/%d, reference %d/%d, direct %d/%d reps; "+
			"CDN requests refused (4xx): multiproxy %d, reference %d, direct %d; token requests per pull: multiproxy %.1f, reference %.1f, direct %.1f",
			mpS.Exact, mpS.Reps, refS.Exact, refS.Reps, dirS.Exact, dirS.Reps, mpS.Refused, refS.Refused, dirS.Refused,
			perRep(mpS.Tokens, mpS.Reps), perRep(refS.Tokens, refS.Reps), perRep(dirS.Tokens, dirS.Reps))})
	auth := b.addRow(&row{Key: key + "_auth", Metric: "  CDN requests carrying Authorization (want 0)", Unit: "reqs", BaseName: "direct",
		MP: f(mpS.Auth), Ref: f(refS.Auth), Base: f(dirS.Auth), Note: "summed over reps"})
	for _, x := range []*row{gets, auth} {
		x.Ratio, x.MPvsBase, x.RefvsBase = nil, nil, nil // counts to check, not to compare
	}
}

func perRep(n int64, reps int) float64 {
	if reps == 0 {
		return 0
	}
	return float64(n) / float64(reps)
}

// tokenCDNGoal: issue "Upstreams as they really are".
func (b *bench) tokenCDNGoal() goal {
	g := goal{Goal: "token + CDN upstream: cold pull served, every blob through the CDN exactly once, no Authorization at the CDN", Status: "n/a"}
	mp := b.tcSides["multiproxy"]
	if mp == nil {
		g.Detail = "not measured: " + b.tcErr
		return g
	}
	g.Status = map[bool]string{true: "PASS", false: "FAIL"}[mp.ok()]
	g.Detail = "multiproxy " + mp.String()
	if r := b.row("cold_image_cdn"); r != nil && r.MPvsBase != nil {
		g.Detail += fmt.Sprintf(", %.2fx direct", *r.MPvsBase)
		if r.Ratio != nil {
			g.Detail += fmt.Sprintf(", %.2fx the reference's time", *r.Ratio)
		}
	}
	g.Detail += "; reference " + b.tcSides["reference"].String() + "; direct " + b.tcSides["direct"].String()
	return g
}
