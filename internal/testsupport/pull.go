package testsupport

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// PullVerified fetches an image manifest and every blob it names from a
// registry (usually a multiproxy port) with a plain HTTP client, checking
// each against its digest. There are no retries: every failure counts,
// which is what load tests that promise zero failed pulls need.
func PullVerified(c *http.Client, base, repo, ref string) error {
	req, err := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("manifest %s:%s: %w", repo, ref, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("manifest %s:%s: %d %v", repo, ref, resp.StatusCode, err)
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != sha256Digest(body) {
		return fmt.Errorf("manifest %s:%s: header %s, body %s", repo, ref, d, sha256Digest(body))
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return fmt.Errorf("manifest %s:%s: %w", repo, ref, err)
	}
	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}
	for _, d := range digests {
		if err := PullVerifiedBlob(c, base, repo, d); err != nil {
			return err
		}
	}
	return nil
}

// PullVerifiedBlob GETs one blob and checks its bytes against digest d.
func PullVerifiedBlob(c *http.Client, base, repo, d string) error {
	resp, err := c.Get(base + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		return fmt.Errorf("blob %s of %s: %w", d, repo, err)
	}
	h := sha256.New()
	_, err = io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("blob %s of %s: %d %v", d, repo, resp.StatusCode, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return fmt.Errorf("blob %s of %s: got %s", d, repo, got)
	}
	return nil
}
