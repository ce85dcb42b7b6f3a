package cache_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// A tag is revalidated with one HEAD per resolve: unchanged, that HEAD is
// all it costs; moved, one GET by the new digest follows, and the new
// manifest is stored. Against every kind of upstream.
func TestTagRevalidation(t *testing.T) {
	for _, prof := range ts.Profiles() {
		t.Run(prof.Name, func(t *testing.T) {
			fx := newFixture(t, prof)
			v1 := fx.push(t, "library/app:1", 1024)
			if res := fx.resolve(t, "library/app", "1"); res.Digest != v1 || res.Stale {
				t.Fatalf("cold: %+v, want %s", res, v1)
			}

			t.Run("unchanged is a hit", func(t *testing.T) {
				fx.f.ResetCounts()
				hits := fx.obs.count("hit tag")
				if res := fx.resolve(t, "library/app", "1"); res.Digest != v1 || res.Stale || res.Manifest != nil {
					t.Fatalf("%+v, want %s from the store", res, v1)
				}
				if heads, gets := fx.f.Count("HEAD", "/manifests/"), fx.f.Count("GET", "/manifests/"); heads != 1 || gets != 0 {
					t.Errorf("%d HEADs and %d GETs upstream, want 1 and 0: %v", heads, gets, fx.f.Requests())
				}
				if n := fx.obs.count("hit tag") - hits; n != 1 {
					t.Errorf("%d tag hits reported, want 1", n)
				}
			})

			t.Run("moved is a miss and fetches the manifest", func(t *testing.T) {
				v2 := fx.push(t, "library/app:1", 1024)
				fx.f.ResetCounts()
				misses := fx.obs.count("miss tag")
				if res := fx.resolve(t, "library/app", "1"); res.Digest != v2 || res.Stale {
					t.Fatalf("%+v, want the new %s", res, v2)
				}
				if heads, gets := fx.f.Count("HEAD", "/manifests/1"), fx.f.Count("GET", "/manifests/"+v2.String()); heads != 1 || gets != 1 {
					t.Errorf("%d HEADs of the tag and %d GETs of the new digest, want 1 and 1: %v", heads, gets, fx.f.Requests())
				}
				if n := fx.obs.count("miss tag") - misses; n != 1 {
					t.Errorf("%d tag misses reported, want 1", n)
				}
				if !fx.hasManifest(t, "library/app", v2) || fx.localTag(t, "library/app", "1") != v2 {
					t.Error("the new manifest is not stored under the tag")
				}
			})
		})
	}
}

// An upstream whose HEAD has no Docker-Content-Digest: the tag is fetched
// by GET and hashed, once, and what was fetched is what gets stored.
func TestHeadWithoutDigestFetchesByTag(t *testing.T) {
	fx := newFixture(t, plain())
	want := fx.push(t, "library/app:1", 1024)
	fx.f.Add(ts.Rule{Method: http.MethodHead, PathContains: "/manifests/", Action: ts.DropHeader("Docker-Content-Digest")})

	if res := fx.resolve(t, "library/app", "1"); res.Digest != want || res.Stale {
		t.Fatalf("%+v, want %s", res, want)
	}
	if tagGets, digestGets := fx.f.Count("GET", "/manifests/1"), fx.f.Count("GET", "/manifests/"+want.String()); tagGets != 1 || digestGets != 0 {
		t.Errorf("%d GETs by tag and %d by digest, want 1 and 0: %v", tagGets, digestGets, fx.f.Requests())
	}
	if !fx.hasManifest(t, "library/app", want) || fx.localTag(t, "library/app", "1") != want {
		t.Error("the manifest fetched by tag is not stored under the tag")
	}
}

// Stale-if-error: when revalidation fails because the upstream is slow,
// failing, rate limiting, refusing credentials or gone, a cached tag is
// served, marked stale with the cause; an uncached one gets the upstream's
// failure, a 429 with its Retry-After.
func TestStaleIfError(t *testing.T) {
	for _, c := range []struct {
		cause   upstream.Cause
		fault   ts.Action // on every manifest request; nil: the registry stops
		timeout bool
		header  string // the upstream header an uncached pull keeps
	}{
		{cause: upstream.CauseTimeout, fault: ts.BlackHole(), timeout: true},
		{cause: upstream.CauseServerError, fault: ts.Status(http.StatusServiceUnavailable, nil)},
		{cause: upstream.CauseRateLimited, fault: ts.Status(http.StatusTooManyRequests, map[string]string{"Retry-After": "17"}), header: "Retry-After"},
		{cause: upstream.CauseAuth, fault: ts.Status(http.StatusUnauthorized, nil)},
		{cause: upstream.CauseUnreachable},
	} {
		t.Run(string(c.cause), func(t *testing.T) {
			fx := newFixture(t, plain())
			cached := fx.push(t, "library/cached:1", 1024)
			fx.push(t, "library/uncached:1", 1024)
			fx.resolve(t, "library/cached", "1")
			if c.timeout {
				// The black hole is waited out once per resolve.
				fx.setTimeout(t, 500*time.Millisecond)
			}
			if c.fault != nil {
				fx.f.Add(ts.Rule{PathContains: "/manifests/", Action: c.fault})
				t.Cleanup(fx.f.ReleaseHeld)
			} else {
				fx.up.Registry.Stop()
			}

			res := fx.resolve(t, "library/cached", "1")
			if res.Digest != cached || !res.Stale || res.Cause != c.cause {
				t.Errorf("cached tag: %+v, want %s stale because of %s", res, cached, c.cause)
			}
			if n := fx.obs.count("stale " + string(c.cause)); n != 1 {
				t.Errorf("%d stale serves reported for %s, want 1", n, c.cause)
			}

			_, err := fx.c.ResolveTag(t.Context(), "library/uncached", "1")
			var ue *upstream.Error
			if !errors.As(err, &ue) || ue.Cause != c.cause {
				t.Fatalf("uncached tag: %v, want an upstream error of cause %s", err, c.cause)
			}
			if c.header != "" && ue.Header.Get(c.header) == "" {
				t.Errorf("uncached tag: the upstream's %s is lost (headers %v)", c.header, ue.Header)
			}
		})
	}
}

// A 404 from a working upstream is not a failure: the tag was deleted, so
// the 404 is passed on and the cached tag dropped, and a later outage does
// not bring it back.
func TestUpstream404DropsTheCachedTag(t *testing.T) {
	fx := newFixture(t, plain())
	d := fx.push(t, "library/app:1", 1024)
	fx.resolve(t, "library/app", "1")

	req, err := http.NewRequest(http.MethodDelete, fx.up.Registry.URL()+"/v2/library/app/manifests/"+d.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := fx.up.Registry.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete upstream: %d", resp.StatusCode)
	}

	if _, err := fx.c.ResolveTag(t.Context(), "library/app", "1"); !upstream.IsNotFound(err) {
		t.Fatalf("tag deleted upstream: %v, want not found", err)
	}
	if got := fx.localTag(t, "library/app", "1"); got != "" {
		t.Errorf("the store still tags %s", got)
	}
	fx.f.Add(ts.Rule{PathContains: "/manifests/", Action: ts.Status(http.StatusServiceUnavailable, nil)})
	if res, err := fx.c.ResolveTag(t.Context(), "library/app", "1"); err == nil {
		t.Errorf("during an outage the deleted tag came back: %+v", res)
	}
}

// Bytes that do not match their digest never enter the store, whether a
// manifest's or a blob's, and the next good answer is stored.
func TestWrongBytesAreNeverStored(t *testing.T) {
	t.Run("manifest", func(t *testing.T) {
		fx := newFixture(t, plain())
		d := fx.push(t, "library/app:1", 1024)
		remove := fx.f.Add(ts.Rule{Method: http.MethodGet, PathContains: "/manifests/", Action: ts.FlipByte(10)})
		if _, err := fx.c.EnsureManifest(t.Context(), "library/app", d); upstream.CauseOf(err) != upstream.CauseBadContent {
			t.Fatalf("corrupt manifest: %v, want bad content", err)
		}
		if fx.hasManifest(t, "library/app", d) {
			t.Fatal("the corrupt manifest was stored")
		}
		remove()
		if m, err := fx.c.EnsureManifest(t.Context(), "library/app", d); err != nil || m != nil || !fx.hasManifest(t, "library/app", d) {
			t.Fatalf("good manifest: %v, in memory %v, stored %v", err, m != nil, fx.hasManifest(t, "library/app", d))
		}
	})

	for name, fault := range map[string]ts.Action{
		"blob with a flipped byte": ts.FlipByte(100 << 10),
		"blob cut short":           ts.Truncate(100 << 10),
	} {
		t.Run(name, func(t *testing.T) {
			fx := newFixture(t, plain())
			layer, _ := fx.pushLayer(t, "library/app:1", 256<<10)
			remove := fx.f.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer.String(), Action: fault})
			if got, err := drain(fx.blob(t, "library/app", layer)); err == nil {
				t.Fatalf("the blob ended cleanly with %s from a bad upstream", got)
			}
			fx.settle(t)
			if fx.blobStored(t, layer) {
				t.Fatal("the bad blob was stored")
			}
			remove()
			if got, err := drain(fx.blob(t, "library/app", layer)); err != nil || got != layer {
				t.Fatalf("good blob: %s, %v", got, err)
			}
			fx.settle(t)
			if !fx.blobStored(t, layer) {
				t.Error("the good blob was not stored")
			}
		})
	}
}

// A store that cannot take a manifest does not fail the pull: the
// verified bytes come back to be served from memory.
func TestManifestServedFromMemoryWhenTheStoreRefusesIt(t *testing.T) {
	fx := newFixture(t, plain())
	d := fx.push(t, "library/app:1", 1024)
	// The repository's _manifests is a file: no link can be written
	// under it, whoever we run as.
	manifests := filepath.Join(fx.root, "docker/registry/v2/repositories/library/app/_manifests")
	if err := os.MkdirAll(filepath.Dir(manifests), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(manifests, []byte("not a directory\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	check := func(what string, m *cache.Manifest) {
		t.Helper()
		if m == nil {
			t.Fatalf("%s: no manifest to serve from memory", what)
		}
		if got := digest.Digest("sha256:" + hexSum(m.Body)); got != d || m.MediaType == "" {
			t.Errorf("%s: in memory %s (%q), want %s", what, got, m.MediaType, d)
		}
	}
	res := fx.resolve(t, "library/app", "1")
	if res.Digest != d {
		t.Fatalf("resolve: %s, want %s", res.Digest, d)
	}
	check("by tag", res.Manifest)
	m, err := fx.c.EnsureManifest(t.Context(), "library/app", d)
	if err != nil {
		t.Fatal(err)
	}
	check("by digest", m)
	if op, _, err := fx.c.StorageProblem(); op != cache.OpManifest || err == nil {
		t.Errorf("storage problem %q (%v), want %q", op, err, cache.OpManifest)
	}
	if n := fx.obs.count("storage error " + cache.OpManifest); n < 1 {
		t.Error("no storage error reported")
	}
}

func hexSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
