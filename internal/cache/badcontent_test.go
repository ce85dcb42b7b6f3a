package cache_test

import (
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// An upstream answer that is not valid for its endpoint is the upstream's
// failure: a bad-content error, reported as such, and never a failed write
// to the store, which would make the node unready until the next good
// write.
func TestBadContentIsTheUpstreamsNotTheStores(t *testing.T) {
	fx := newFixture(t, plain())
	subject := fx.push(t, "library/app:1", 1024)

	check := func(t *testing.T, what string, err error, kind string, want int64) {
		t.Helper()
		if cause := upstream.CauseOf(err); cause != upstream.CauseBadContent {
			t.Errorf("%s: %v, want bad content", what, err)
		}
		if op, _, serr := fx.c.StorageProblem(); serr != nil {
			t.Errorf("%s: recorded as a storage problem (%s: %v)", what, op, serr)
		}
		if n := fx.obs.count("storage error manifest"); n != 0 {
			t.Errorf("%s: %d storage errors reported", what, n)
		}
		if n := fx.obs.count("bad content " + kind); n != want {
			t.Errorf("%s: %d bad %s answers reported, want %d", what, n, kind, want)
		}
	}

	t.Run("referrers", func(t *testing.T) {
		remove := fx.f.Add(ts.Rule{PathContains: "/referrers/", Action: ts.Body(http.StatusOK, "application/vnd.oci.image.index.v1+json", `{"foo":1}`)})
		defer remove()
		refs, err := fx.c.Referrers(t.Context(), "library/app", subject, "")
		check(t, `referrers {"foo":1}`, err, "referrers", 1)
		if refs.Body != nil {
			t.Errorf("referrers answered %s", refs.Body)
		}
	})

	t.Run("tag list", func(t *testing.T) {
		for i, body := range []string{`{"foo":1}`, `[1,2]`, `not json`} {
			remove := fx.f.Add(ts.Rule{PathContains: "/tags/list", Action: ts.Body(http.StatusOK, "application/json", body)})
			list, err := fx.c.ListTags(t.Context(), "library/app", "")
			check(t, "tag list "+body, err, "tag", int64(i+1))
			if list.Body != nil {
				t.Errorf("tag list %s answered %s", body, list.Body)
			}
			remove()
		}
	})

	t.Run("manifest distribution refuses", func(t *testing.T) {
		// Verified by its digest, and still no manifest a registry stores.
		body := `{"schemaVersion":3,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}`
		d := digest.FromString(body)
		remove := fx.f.Add(ts.Rule{PathContains: d.Encoded(), Action: ts.Body(http.StatusOK, "application/vnd.oci.image.manifest.v1+json", body)})
		defer remove()
		_, err := fx.c.EnsureManifest(t.Context(), "library/app", d)
		check(t, "manifest with schemaVersion 3", err, "manifest", 1)
		if fx.hasManifest(t, "library/app", d) {
			t.Error("the refused manifest was stored")
		}
	})

	// The same requests answered well pass, and the store was never the
	// problem.
	if _, err := fx.c.ListTags(t.Context(), "library/app", ""); err != nil {
		t.Errorf("tag list from a well upstream: %v", err)
	}
	if _, err := fx.c.Referrers(t.Context(), "library/app", subject, ""); err != nil {
		t.Errorf("referrers from a well upstream: %v", err)
	}
}
