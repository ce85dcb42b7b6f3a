package testsupport

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

type cdnFixture struct {
	r        *Registry
	digest   string
	blob     []byte
	location string // a signed redirect, as the registry gave it
}

func newCDNFixture(t *testing.T) *cdnFixture {
	t.Helper()
	r := StartRegistry(t, RegistryOptions{Token: true, CDN: true})
	img := PushImage(t, r, "cdn/app:1", 1, 32<<10)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	fx := &cdnFixture{r: r, digest: Digest(t, layers[0]), blob: blob}

	tok := fetchToken(t, r, "", "", "repository:cdn/app:pull")
	resp := registryGet(t, r, "/v2/cdn/app/blobs/"+fx.digest, tok.Token)
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("blob GET at the registry: %d, want 307", resp.StatusCode)
	}
	fx.location = resp.Header.Get("Location")
	r.CDN().ResetCounts()
	return fx
}

func (fx *cdnFixture) do(t *testing.T, method, u string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := fx.r.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestCDNRedirectIsSignedAndExpiring(t *testing.T) {
	t.Parallel()
	fx := newCDNFixture(t)
	u, err := url.Parse(fx.location)
	if err != nil {
		t.Fatal(err)
	}
	hex := strings.TrimPrefix(fx.digest, "sha256:")
	if want := fx.r.CDN().URL() + "/docker/registry/v2/blobs/sha256/" + hex[:2] + "/" + hex + "/data"; u.Scheme+"://"+u.Host+u.Path != want {
		t.Fatalf("redirect to %s, want %s?...", fx.location, want)
	}
	exp, err := strconv.ParseInt(u.Query().Get("X-Expires"), 10, 64)
	if left := time.Until(time.Unix(exp, 0)); err != nil || left < 50*time.Second || left > 61*time.Second {
		t.Fatalf("X-Expires %q: %v left, %v", u.Query().Get("X-Expires"), left, err)
	}

	resp, body := fx.do(t, http.MethodGet, fx.location, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, fx.blob) {
		t.Fatalf("signed GET: %d, %d bytes (want %d)", resp.StatusCode, len(body), len(fx.blob))
	}
	resp, body = fx.do(t, http.MethodHead, fx.location, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(fx.blob)) || len(body) != 0 {
		t.Fatalf("signed HEAD: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	resp, body = fx.do(t, http.MethodGet, fx.location, map[string]string{"Range": "bytes=100-199"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, fx.blob[100:200]) {
		t.Fatalf("signed range GET: %d, %d bytes", resp.StatusCode, len(body))
	}

	// An Authorization header is refused even on a good URL, as S3 does.
	resp, body = fx.do(t, http.MethodGet, fx.location, map[string]string{"Authorization": "Bearer leaked"})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "<Code>InvalidArgument</Code>") || !strings.Contains(string(body), "Only one auth mechanism allowed") {
		t.Fatalf("GET with Authorization: %d %s", resp.StatusCode, body)
	}

	path := u.Path
	tampered := strings.Replace(fx.location, "X-Signature=", "X-Signature=00", 1)
	for name, tc := range map[string]struct {
		url, code string
	}{
		"unsigned":     {fx.r.CDN().URL() + path, "AccessDenied"},
		"bad":          {tampered, "SignatureDoesNotMatch"},
		"expired":      {fx.r.CDN().SignedURL(path, time.Now().Add(-time.Second)), "AccessDenied"},
		"other path":   {fx.r.CDN().URL() + "/docker/registry/v2/blobs/sha256/00/" + hex + "/data?" + u.RawQuery, "SignatureDoesNotMatch"},
		"expiry moved": {strings.Replace(fx.location, "X-Expires="+u.Query().Get("X-Expires"), "X-Expires=9999999999", 1), "SignatureDoesNotMatch"},
	} {
		resp, body := fx.do(t, http.MethodGet, tc.url, nil)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "<Code>"+tc.code+"</Code>") {
			t.Errorf("%s URL: %d %s, want 403 %s", name, resp.StatusCode, body, tc.code)
		}
	}
	// Signed, but outside the blob store: nothing else of the registry's
	// storage is published.
	resp, _ = fx.do(t, http.MethodGet, fx.r.CDN().SignedURL("/docker/registry/v2/repositories/cdn/app/_manifests/tags/1/current/link", time.Now().Add(time.Minute)), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("signed URL outside the blob store: %d, want 404", resp.StatusCode)
	}

	c := fx.r.CDN()
	if n := c.Count("GET", fx.digest); n != 8 {
		t.Errorf("Count(GET, digest) = %d, want 8", n)
	}
	if n := c.Count("HEAD", "/data"); n != 1 {
		t.Errorf("Count(HEAD, /data) = %d, want 1", n)
	}
	if n := c.AuthorizationSeen(); n != 1 {
		t.Errorf("AuthorizationSeen = %d, want 1", n)
	}
	reqs := c.Requests()
	if reqs[0].Digest != fx.digest || reqs[0].Status != http.StatusOK || !strings.HasPrefix(reqs[0].UserAgent, "Go-http-client") || reqs[2].Range != "bytes=100-199" {
		t.Errorf("recorded %+v", reqs[:3])
	}
	c.ResetCounts()
	if c.Count("", "") != 0 || len(c.Requests()) != 0 {
		t.Error("ResetCounts kept requests")
	}
}

// TestCDNHeadIsRedirectedToo: distribution redirects HEAD on a blob as it
// does GET, so an existence check also reaches the CDN.
func TestCDNHeadIsRedirectedToo(t *testing.T) {
	t.Parallel()
	fx := newCDNFixture(t)
	tok := fetchToken(t, fx.r, "", "", "repository:cdn/app:pull")
	req, err := http.NewRequest(http.MethodHead, fx.r.BlobURL("cdn/app", fx.digest), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := noRedirects(fx.r).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, fx.r.CDN().URL()+"/") || !strings.Contains(loc, "X-Signature=") {
		t.Fatalf("HEAD blob: %d to %q", resp.StatusCode, loc)
	}
	// Following it with net/http leaves the Authorization header behind,
	// since the CDN is on another hostname.
	resp, err = fx.r.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(fx.blob)) || fx.r.CDN().AuthorizationSeen() != 0 {
		t.Fatalf("followed HEAD: %d, length %d, CDN requests %+v", resp.StatusCode, resp.ContentLength, fx.r.CDN().Requests())
	}
}

func TestCDNURLTTL(t *testing.T) {
	t.Parallel()
	r := NewRegistry(t, RegistryOptions{CDN: true, CDNURLTTL: 3 * time.Second})
	u, err := url.Parse(r.CDN().Sign(r.CDN().URL() + "/docker/registry/v2/blobs/x"))
	if err != nil {
		t.Fatal(err)
	}
	exp, err := strconv.ParseInt(u.Query().Get("X-Expires"), 10, 64)
	if left := time.Until(time.Unix(exp, 0)); err != nil || left < time.Second || left > 3*time.Second {
		t.Fatalf("X-Expires %q: %v left, %v", u.Query().Get("X-Expires"), left, err)
	}
	if other := r.CDN().Sign("http://elsewhere/docker/registry/v2/blobs/x"); other != "http://elsewhere/docker/registry/v2/blobs/x" {
		t.Fatalf("signed a URL of another host: %s", other)
	}
}
