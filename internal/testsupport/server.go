package testsupport

import (
	"encoding/json"
	"net/http"
)

// ociError writes an OCI distribution-spec error body.
func ociError(w http.ResponseWriter, status int, code, message string) {
	body, err := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
