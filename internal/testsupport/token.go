package testsupport

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// TokenIssuer is the token server of a Registry started with Token; see
// testinfra.TokenIssuer for the protocol and its rules. With
// RegistryOptions.Username set, only those credentials get a token;
// without it anonymous requests pull, and Registry.RemoteOptions pushes
// with the issuer's internal account.
type TokenIssuer = testinfra.TokenIssuer

// TokenRequest is one request to the token endpoint.
type TokenRequest = testinfra.TokenRequest

// bearerExpiry reads the exp claim of the bearer token in req without
// verifying it (distribution does that). ok is false when there is no
// parseable JWT.
func bearerExpiry(req *http.Request) (exp time.Time, ok bool) {
	prefix, raw, found := strings.Cut(req.Header.Get("Authorization"), " ")
	if !found || !strings.EqualFold(prefix, "bearer") {
		return time.Time{}, false
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var c struct {
		Exp *int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(*c.Exp, 0), true
}
