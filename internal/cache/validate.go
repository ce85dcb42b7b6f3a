package cache

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
)

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
