package serve

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The peer port takes the token under any spelling of the Bearer scheme
// (RFC 9110: auth schemes are case-insensitive) and nothing else.
func TestRequireTokenMatchesTheSchemeInAnyCase(t *testing.T) {
	const token = "peer-secret-31337"
	h := requireToken(token, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	for authz, want := range map[string]int{
		"Bearer " + token:               http.StatusNoContent,
		"bearer " + token:               http.StatusNoContent,
		"BEARER " + token:               http.StatusNoContent,
		"bEaReR  " + token:              http.StatusNoContent,
		"":                              http.StatusUnauthorized,
		"Bearer":                        http.StatusUnauthorized,
		"Bearer ":                       http.StatusUnauthorized,
		token:                           http.StatusUnauthorized,
		"Basic " + token:                http.StatusUnauthorized,
		"Bearer " + token + "x":         http.StatusUnauthorized,
		"Bearer " + token[:10]:          http.StatusUnauthorized,
		"bearer " + "PEER-SECRET-31337": http.StatusUnauthorized,
		"Bearers " + token:              http.StatusUnauthorized,
	} {
		req := httptest.NewRequest(http.MethodGet, "/peer/v1/u/blobs/sha256:0", nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Authorization %q: %d, want %d", authz, rec.Code, want)
		}
		if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: a 401 without WWW-Authenticate", authz)
		}
	}
}
