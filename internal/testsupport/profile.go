package testsupport

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// k8sPrefix is where registry.k8s.io's front sends "/v2/<name>/...".
const k8sPrefix = "k8s-artifacts-prod/images"

// Profile describes one kind of upstream, modelled on a registry users
// proxy. Start it with Start, or run a test against each of Profiles with
// ForEachProfile.
type Profile struct {
	Name string
	// Token and CDN configure the registry holding the images; see
	// RegistryOptions.
	Token, CDN bool
	// Front puts a Front (registry.k8s.io) before that registry, with
	// FrontPrefix as its repository prefix and a session-token challenge
	// on /v2/ (see FrontOptions.SessionToken).
	Front       bool
	FrontPrefix string
	// Username and Password are credentials the upstream requires
	// (RegistryOptions.Username); empty means public images.
	Username, Password string
	TLS                bool
}

// Profiles lists the upstream kinds every pull path should be tested
// against:
//   - "plain": distribution as it comes, blobs served by the API host;
//   - "token-cdn": bearer tokens from a separate issuer, blobs redirected
//     to a signed-URL CDN that refuses Authorization (docker.io, ghcr.io,
//     quay.io);
//   - "redirected-api": a front that redirects the whole API under a
//     prefix to a token-cdn registry, which challenges with its own realm
//     (registry.k8s.io).
func Profiles() []Profile {
	return []Profile{
		{Name: "plain"},
		{Name: "token-cdn", Token: true, CDN: true},
		{Name: "redirected-api", Token: true, CDN: true, Front: true, FrontPrefix: k8sPrefix},
	}
}

// ForEachProfile runs fn in a subtest per entry of Profiles, each with a
// freshly started Upstream. fn may call t.Parallel.
func ForEachProfile(t *testing.T, fn func(t *testing.T, up *Upstream)) {
	t.Helper()
	for _, p := range Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			fn(t, p.Start(t))
		})
	}
}

// Upstream is a started Profile.
type Upstream struct {
	Profile Profile
	// URL is what the proxy's remote is set to, and Host its host:port,
	// the registry part of the references a client uses.
	URL, Host string
	// Registry holds the images. Without a Front it is also the API host;
	// with one it is the Front's target.
	Registry *Registry
	// Faults wraps Registry's handler (not the CDN's, issuer's or
	// front's).
	Faults *Faults
	// Tokens, CDN and Front are nil when the profile has none.
	Tokens *TokenIssuer
	CDN    *CDN
	Front  *Front
}

// Start starts the profile's servers on 127.0.0.1 for the duration of t.
func (p Profile) Start(t testing.TB) *Upstream {
	t.Helper()
	f := NewFaults()
	reg := StartRegistry(t, RegistryOptions{
		Username: p.Username,
		Password: p.Password,
		TLS:      p.TLS,
		Wrap:     f.Wrap,
		Token:    p.Token,
		CDN:      p.CDN,
	})
	up := &Upstream{
		Profile:  p,
		URL:      reg.URL(),
		Host:     reg.Host(),
		Registry: reg,
		Faults:   f,
		Tokens:   reg.Tokens(),
		CDN:      reg.CDN(),
	}
	if p.Front {
		up.Front = StartFront(t, FrontOptions{Target: reg, Prefix: p.FrontPrefix, SessionToken: true})
		up.URL, up.Host = up.Front.URL(), up.Front.Host()
	}
	return up
}

// StoredRepo is the name under which Registry holds what clients of the
// upstream call repo: repo itself, or with the front's prefix.
func (up *Upstream) StoredRepo(repo string) string {
	if up.Front == nil || up.Front.Prefix() == "" {
		return repo
	}
	return up.Front.Prefix() + "/" + strings.TrimPrefix(repo, "/")
}

// Ref returns Host+"/"+s, the reference a client of the upstream uses,
// e.g. Ref("library/app:1").
func (up *Upstream) Ref(repoAndTagOrDigest string) string {
	return up.Host + "/" + repoAndTagOrDigest
}

// Push is PushImage to where clients of the upstream find repoTag ("repo:tag"
// as they name it).
func (up *Upstream) Push(t testing.TB, repoTag string, layers int, layerSize int64) v1.Image {
	t.Helper()
	return PushImage(t, up.Registry, up.StoredRepo(repoTag), layers, layerSize)
}

// PushIndex is PushIndex to where clients of the upstream find repoTag.
func (up *Upstream) PushIndex(t testing.TB, repoTag string) v1.ImageIndex {
	t.Helper()
	return PushIndex(t, up.Registry, up.StoredRepo(repoTag))
}

// RemoteOptions let go-containerregistry pull from URL directly as a
// client of the upstream would: the profile's credentials (none for public
// images) and a transport trusting its CA. go-containerregistry answers a
// challenge from a redirected host anonymously, so with a Front and
// credentials its pulls fail.
func (up *Upstream) RemoteOptions() []remote.Option {
	var auth authn.Authenticator = authn.Anonymous
	if up.Profile.Username != "" {
		auth = &authn.Basic{Username: up.Profile.Username, Password: up.Profile.Password}
	}
	return []remote.Option{remote.WithAuth(auth), remote.WithTransport(up.Registry.transport)}
}

// ProxyUpstream is the upstream as the proxy's config names it: remote
// URL, CA and credentials.
func (up *Upstream) ProxyUpstream(name string) ProxyUpstream {
	return ProxyUpstream{Name: name, Reg: up.Registry, URL: up.URL}
}
