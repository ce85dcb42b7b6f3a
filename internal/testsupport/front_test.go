package testsupport

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func frontDo(t *testing.T, f *Front, method, path, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, f.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestFrontRedirects(t *testing.T) {
	t.Parallel()
	target := StartRegistry(t, RegistryOptions{})
	f := StartFront(t, FrontOptions{Target: target, Prefix: "/k8s-artifacts-prod/images/"})
	if !strings.HasPrefix(f.URL(), "http://127.0.0.1:") || f.Ref("pause:3") != f.Host()+"/pause:3" || f.Prefix() != "k8s-artifacts-prod/images" {
		t.Fatalf("URL %q Ref %q Prefix %q", f.URL(), f.Ref("pause:3"), f.Prefix())
	}

	for _, m := range []string{http.MethodGet, http.MethodHead} {
		for _, p := range []string{"/v2/", "/v2"} {
			resp := frontDo(t, f, m, p, "")
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-Api-Version") != "registry/2.0" {
				t.Fatalf("%s %s: %d %v", m, p, resp.StatusCode, resp.Header)
			}
		}
	}

	to := target.svc.NamedURL() + "/v2/k8s-artifacts-prod/images/"
	digest := "sha256:" + strings.Repeat("ab", 32)
	for path, want := range map[string]string{
		"/v2/pause/manifests/3.9?ns=registry.k8s.io":      to + "pause/manifests/3.9?ns=registry.k8s.io",
		"/v2/pause/blobs/" + digest:                       to + "pause/blobs/" + digest,
		"/v2/pause/tags/list?n=10&last=3.8":               to + "pause/tags/list?n=10&last=3.8",
		"/v2/pause/referrers/" + digest + "?artifactType": to + "pause/referrers/" + digest + "?artifactType",
		// Names may contain route keywords as components; the split is
		// at the last one, as distribution's router makes it.
		"/v2/team/blobs/app/blobs/" + digest:         to + "team/blobs/app/blobs/" + digest,
		"/v2/x/manifests/y/tags/list":                to + "x/manifests/y/tags/list",
		"/v2/app/manifests/blobs":                    to + "app/manifests/blobs",
		"/v2/a/referrers/b/manifests/" + digest[:20]: to + "a/referrers/b/manifests/" + digest[:20],
	} {
		resp := frontDo(t, f, http.MethodGet, path, "")
		if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != want {
			t.Errorf("GET %s: %d to %q, want 307 to %q", path, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
	if resp := frontDo(t, f, http.MethodHead, "/v2/pause/manifests/3.9", ""); resp.StatusCode != http.StatusTemporaryRedirect {
		t.Errorf("HEAD manifest: %d, want 307", resp.StatusCode)
	}
	for path, want := range map[string]int{
		"/v2/_catalog":                 http.StatusNotFound,
		"/v2/pause/blobs/uploads/":     http.StatusNotFound,
		"/v2/Upper/manifests/1":        http.StatusNotFound,
		"/v1/pause/manifests/3.9":      http.StatusNotFound,
		"/v2/pause/manifests/3.9/junk": http.StatusNotFound,
	} {
		if resp := frontDo(t, f, http.MethodGet, path, ""); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if resp := frontDo(t, f, http.MethodPut, "/v2/pause/manifests/3.9", ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT: %d, want 405", resp.StatusCode)
	}

	if n := f.Count("GET", "/manifests/"); n != 7 {
		t.Errorf("Count(GET, /manifests/) = %d, want 7", n)
	}
	var found bool
	for _, r := range f.Requests() {
		if r.Path == "/v2/pause/manifests/3.9" && r.Query == "ns=registry.k8s.io" && r.Status == http.StatusTemporaryRedirect {
			found = true
		}
	}
	if !found {
		t.Errorf("manifest request not recorded: %+v", f.Requests())
	}
	f.ResetCounts()
	if len(f.Requests()) != 0 {
		t.Error("ResetCounts kept requests")
	}
}

// TestFrontBeforeTokenRegistry follows, on the wire, what a client meets
// when the redirect target wants a token of its own realm.
func TestFrontBeforeTokenRegistry(t *testing.T) {
	t.Parallel()
	target := StartRegistry(t, RegistryOptions{Token: true, CDN: true})
	img := PushImage(t, target, "pfx/app:1", 1, 2048)
	f := StartFront(t, FrontOptions{Target: target, Prefix: "pfx"})

	resp := frontDo(t, f, http.MethodGet, "/v2/app/manifests/1", "")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, "http://localhost:") {
		t.Fatalf("front: %d to %q", resp.StatusCode, loc)
	}
	req, err := http.NewRequest(http.MethodGet, loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err = noRedirects(target).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := `Bearer realm="` + target.Tokens().URL() + `",service="` + target.Tokens().Service() + `",scope="repository:pfx/app:pull"`
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("target: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
	tok := fetchToken(t, target, "", "", "repository:pfx/app:pull")
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = noRedirects(target).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != Digest(t, img) {
		t.Fatalf("target with token: %d %q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
}

func TestFrontSessionToken(t *testing.T) {
	t.Parallel()
	f := StartFront(t, FrontOptions{Target: StartRegistry(t, RegistryOptions{}), SessionToken: true})
	resp := frontDo(t, f, http.MethodGet, "/v2/", "")
	want := `Bearer realm="` + f.URL() + `/token",service="` + f.Host() + `"`
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
		t.Fatalf("GET /v2/: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
	}
	tr, err := http.Get(f.URL() + "/token?service=" + f.Host())
	if err != nil {
		t.Fatal(err)
	}
	var tok tokenResponse
	err = json.NewDecoder(tr.Body).Decode(&tok)
	tr.Body.Close()
	if err != nil || tok.Token == "" {
		t.Fatalf("session token: %v %+v", err, tok)
	}
	if resp := frontDo(t, f, http.MethodGet, "/v2/", tok.Token); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/ with session token: %d", resp.StatusCode)
	}
	// Redirects do not depend on it.
	if resp := frontDo(t, f, http.MethodGet, "/v2/app/manifests/1", ""); resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("manifest without session token: %d", resp.StatusCode)
	}
}

func TestFrontStopStart(t *testing.T) {
	t.Parallel()
	f := StartFront(t, FrontOptions{Target: StartRegistry(t, RegistryOptions{})})
	host := f.Host()
	f.Stop()
	requireDialRefused(t, host)
	f.Stop()
	f.Start()
	if f.Host() != host || frontDo(t, f, http.MethodGet, "/v2/", "").StatusCode != http.StatusOK {
		t.Fatal("front did not come back on its address")
	}
}
