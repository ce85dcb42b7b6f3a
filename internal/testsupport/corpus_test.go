package testsupport

import (
	"net/http"
	"testing"
)

// TestPushCorpus checks that the registry kept every manifest of the corpus
// as pushed: reachable by tag and digest, with its media type, digest and
// size, so the suites built on it compare real content.
func TestPushCorpus(t *testing.T) {
	r := StartRegistry(t, RegistryOptions{})
	c := PushCorpus(t, r, "conformance/corpus")
	client := r.HTTPClient()
	for _, m := range c.Manifests {
		refs := []string{m.Digest}
		if m.Tag != "" {
			refs = append(refs, m.Tag)
		}
		for _, ref := range refs {
			req, _ := http.NewRequest(http.MethodHead, r.URL()+"/v2/"+c.Repo+"/manifests/"+ref, nil)
			req.Header.Set("Accept", m.MediaType)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != m.MediaType ||
				resp.Header.Get("Docker-Content-Digest") != m.Digest || resp.ContentLength != m.Size {
				t.Errorf("%s by %s: %d %s %s %d, want 200 %s %s %d", m.Name, ref, resp.StatusCode,
					resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), resp.ContentLength,
					m.MediaType, m.Digest, m.Size)
			}
		}
	}
	for _, b := range c.Blobs {
		resp, err := client.Head(r.BlobURL(c.Repo, b.Digest))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength != b.Size {
			t.Errorf("blob %s (%s): %d, %d bytes, want 200, %d bytes", b.Name, b.Digest, resp.StatusCode, resp.ContentLength, b.Size)
		}
	}
	t.Logf("%d manifests (%d tags), %d blobs, %d subjects", len(c.Manifests), len(c.Tags()), len(c.Blobs), len(c.Subjects))
}
