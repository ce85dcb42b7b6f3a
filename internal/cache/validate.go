package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"slices"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/upstream"
)

// manifestMediaType is the media type to read a manifest's bytes as. The
// upstream's Content-Type says it, when it names a manifest type. Some
// registries (and CDNs or object stores in front of them) serve manifests as
// text/plain, application/json or with no Content-Type at all: the bytes
// still say what they are, and clients (containerd, distribution's own
// proxy) go by them, so a Content-Type that is no manifest type is replaced
// by the manifest's own mediaType field. Without one, an OCI index is told
// from an OCI manifest by its manifests field, as distribution's store does.
func manifestMediaType(contentType string, body []byte) string {
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && slices.Contains(upstream.ManifestAccept, mt) {
		return contentType
	}
	var v struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &v) != nil {
		// Left to the parse that follows to refuse, with its reason.
		return contentType
	}
	switch {
	case v.MediaType != "":
		return v.MediaType
	case len(v.Manifests) > 0 && string(v.Manifests) != "null":
		return v1.MediaTypeImageIndex
	default:
		return v1.MediaTypeImageManifest
	}
}

// checkManifest refuses what distribution's manifest handlers refuse on a
// write when, as here, the references are not checked (SkipLayerVerification):
// a schema version other than 2. They refuse it with an untyped error that
// would look like a store failing, so it is checked before the write.
func checkManifest(body []byte) error {
	var v struct {
		SchemaVersion int `json:"schemaVersion"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("read schemaVersion: %w", err)
	}
	if v.SchemaVersion != 2 {
		return fmt.Errorf("schemaVersion %d, want 2", v.SchemaVersion)
	}
	return nil
}

// manifestRefused reports a write distribution refused for the manifest's
// content rather than for the store: the upstream's fault, not the disk's.
func manifestRefused(err error) bool {
	var (
		verification distribution.ErrManifestVerification
		unverified   distribution.ErrManifestUnverified
		blobUnknown  distribution.ErrManifestBlobUnknown
		nameInvalid  distribution.ErrManifestNameInvalid
		code         errcode.Error
		codes        errcode.Errors
	)
	return errors.As(err, &verification) || errors.As(err, &unverified) ||
		errors.As(err, &blobUnknown) || errors.As(err, &nameInvalid) ||
		errors.As(err, &code) || errors.As(err, &codes) ||
		errors.Is(err, distribution.ErrSchemaV1Unsupported)
}
