package cache_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/storelayout"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// fixture is a Cache over a fresh store, pointed at a real registry of
// one profile, wired as internal/proxy wires it.
type fixture struct {
	up   *ts.Upstream
	f    *ts.Faults // on the registry's API host
	c    *cache.Cache
	obs  *observer
	root string
}

// newFixture starts prof's registry and a cache in front of it. The
// upstream timeout is 10 s, which only a hang reaches; see setTimeout.
func newFixture(t *testing.T, prof ts.Profile) *fixture {
	t.Helper()
	return newFixtureWith(t, prof, nil)
}

// newFixtureWith is newFixture with the cache's options changed by set
// (given the storage root) before the cache opens.
func newFixtureWith(t *testing.T, prof ts.Profile, set func(root string, o *cache.Options)) *fixture {
	t.Helper()
	up := prof.Start(t)
	fx := &fixture{up: up, f: up.Faults, obs: newObserver(), root: t.TempDir()}
	o := cache.Options{
		Root:        fx.root,
		Upstream:    fx.client(t, 10*time.Second),
		FillTimeout: time.Minute,
		Observer:    fx.obs,
	}
	if set != nil {
		set(fx.root, &o)
	}
	var err error
	fx.c, err = cache.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fx.c.Close)
	return fx
}

// client is an upstream client for the fixture's registry, wired as
// internal/proxy wires it.
func (fx *fixture) client(t *testing.T, timeout time.Duration) *upstream.Client {
	t.Helper()
	c, err := upstream.New(upstream.Options{
		Name:      "docker.io",
		Remote:    fx.up.URL,
		Username:  fx.up.Profile.Username,
		Password:  fx.up.Profile.Password,
		CAFile:    fx.up.Registry.CAFile(),
		Timeout:   timeout,
		UserAgent: "multiproxy/test",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// setTimeout gives the cache a new upstream client with this timeout, as
// a reload would: a test that waits out a black hole sets a short one once
// what it needs is cached.
func (fx *fixture) setTimeout(t *testing.T, timeout time.Duration) {
	t.Helper()
	fx.c.Update(cache.Options{Upstream: fx.client(t, timeout), FillTimeout: time.Minute})
}

// plain is the plain registry profile, for cases whose fault must sit
// where the bytes are served (a CDN would serve blobs past the Faults).
func plain() ts.Profile { return ts.Profiles()[0] }

// push pushes a one-layer image as repo:tag and returns its manifest
// digest. Here and in pushLayer the push's own requests are forgotten: the
// Faults count the cache's.
func (fx *fixture) push(t *testing.T, repoTag string, layerSize int64) digest.Digest {
	t.Helper()
	d := digest.Digest(ts.Digest(t, fx.up.Push(t, repoTag, 1, layerSize)))
	fx.f.ResetCounts()
	return d
}

// pushLayer pushes a one-layer image as repo:tag and returns its layer's
// digest and size.
func (fx *fixture) pushLayer(t *testing.T, repoTag string, layerSize int64) (digest.Digest, int64) {
	t.Helper()
	img := fx.up.Push(t, repoTag, 1, layerSize)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	n, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}
	fx.f.ResetCounts()
	return digest.Digest(d.String()), n
}

// resolve is ResolveTag, failing the test on an error.
func (fx *fixture) resolve(t *testing.T, name, tag string) cache.Resolved {
	t.Helper()
	res, err := fx.c.ResolveTag(t.Context(), name, tag)
	if err != nil {
		t.Fatalf("resolve %s:%s: %v", name, tag, err)
	}
	return res
}

// hasManifest reports whether the store holds manifest d for name.
func (fx *fixture) hasManifest(t *testing.T, name string, d digest.Digest) bool {
	t.Helper()
	ms, err := fx.repo(t, name).Manifests(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ok, err := ms.Exists(t.Context(), d)
	return err == nil && ok
}

// localTag is what the store's tag points at, "" if it has none.
func (fx *fixture) localTag(t *testing.T, name, tag string) digest.Digest {
	t.Helper()
	desc, err := fx.repo(t, name).Tags(t.Context()).Get(t.Context(), tag)
	var unknown distribution.ErrTagUnknown
	if errors.As(err, &unknown) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return desc.Digest
}

func (fx *fixture) repo(t *testing.T, name string) distribution.Repository {
	t.Helper()
	named, err := reference.WithName(name)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := fx.c.Namespace().Repository(t.Context(), named)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// blobStored reports whether the store holds blob d's bytes (for any
// repository: they are linked on demand).
func (fx *fixture) blobStored(t *testing.T, d digest.Digest) bool {
	t.Helper()
	_, err := fx.c.Driver().Stat(t.Context(), storelayout.BlobData(d))
	return err == nil
}

// blob is Cache.Blob, failing the test on an error.
func (fx *fixture) blob(t *testing.T, name string, d digest.Digest) *cache.BlobReader {
	t.Helper()
	br, err := fx.c.Blob(t.Context(), name, d)
	if err != nil {
		t.Fatalf("blob %s of %s: %v", d, name, err)
	}
	return br
}

// settle waits until no fill runs: a client has a blob's last byte just
// before its fill commits.
func (fx *fixture) settle(t *testing.T) {
	t.Helper()
	ts.WaitUntil(t, 30*time.Second, "no fill in flight", func() (bool, string) {
		n := fx.c.FillsInFlight()
		return n == 0, fmt.Sprintf("%d fills", n)
	})
}

// hold makes the upstream send the first after bytes of every GET of
// pathContains and hold the rest until the returned release is called
// (at the latest when the test ends).
func (fx *fixture) hold(t *testing.T, pathContains string, after int64) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	fx.f.Add(ts.Rule{Method: http.MethodGet, PathContains: pathContains, Action: ts.HoldBody(after, ch)})
	return release
}

// drain reads a blob to its end, from its file or its stream, and
// returns the digest of what it read.
func drain(br *cache.BlobReader) (digest.Digest, error) {
	defer br.Close()
	var r io.Reader = br.Stream
	if br.File != nil {
		r = br.File
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return digest.Digest("sha256:" + hex.EncodeToString(h.Sum(nil))), nil
}

// observer counts what the cache reports, by method and argument.
type observer struct {
	mu sync.Mutex
	n  map[string]int64
}

func newObserver() *observer { return &observer{n: map[string]int64{}} }

func (o *observer) add(key string, n int64) {
	o.mu.Lock()
	o.n[key] += n
	o.mu.Unlock()
}

// count is how often (or how much, for UpstreamBytes) key was reported,
// e.g. "hit tag", "stale timeout", "upstream bytes".
func (o *observer) count(key string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[key]
}

func (o *observer) FillUncoordinated()      { o.add("uncoordinated", 1) }
func (o *observer) FillTakeover()           { o.add("takeover", 1) }
func (o *observer) FillSource(s string)     { o.add("source "+s, 1) }
func (o *observer) Hit(kind string)         { o.add("hit "+kind, 1) }
func (o *observer) Miss(kind string)        { o.add("miss "+kind, 1) }
func (o *observer) Stale(cause string)      { o.add("stale "+cause, 1) }
func (o *observer) DedupJoin(kind string)   { o.add("join "+kind, 1) }
func (o *observer) UpstreamBytes(n int64)   { o.add("upstream bytes", n) }
func (o *observer) FillUncached(why string) { o.add("uncached "+why, 1) }
func (o *observer) StorageError(op string)  { o.add("storage error "+op, 1) }
func (o *observer) BadContent(kind string)  { o.add("bad content "+kind, 1) }
