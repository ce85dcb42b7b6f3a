package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// An upstream's answer reaches a client only as multiproxy re-encodes it
// from what it parsed: an answer that is not what its endpoint promises (an
// HTML error page with a 200, a proxy's captive portal, a registry bug) is a
// CauseBadContent error, which a client gets as a 502, and never bytes a
// client might misread as a tag list or a referrers index.

// tagPattern is the distribution spec's tag grammar.
var tagPattern = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// mediaTypePattern is the OCI image spec's media type grammar (RFC 6838).
var mediaTypePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)

func badContent(op string, format string, a ...any) error {
	return &Error{Op: op, Cause: CauseBadContent, Err: fmt.Errorf(format, a...)}
}

// decodeOne decodes body, which must hold exactly one JSON value, into v: a
// valid list followed by anything else is not a valid answer either.
func decodeOne(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}

// parseTagList reads a tag list page, {"name": ..., "tags": [...]}. The name
// must be a repository name but need not be the one asked for: behind a
// redirected API (registry.k8s.io) the upstream names its own repository.
// A null tags field, which some registries send for a repository without
// tags, is an empty list; a missing one is not a tag list.
func parseTagList(body []byte) ([]string, error) {
	const op = "parse tag list"
	var raw struct {
		Name *string         `json:"name"`
		Tags json.RawMessage `json:"tags"` // "null" when null, empty when missing
	}
	if err := decodeOne(body, &raw); err != nil {
		return nil, badContent(op, "not a tag list: %w", err)
	}
	if raw.Name == nil {
		return nil, badContent(op, "no name")
	}
	if _, err := reference.WithName(*raw.Name); err != nil {
		return nil, badContent(op, "name %q: %w", *raw.Name, err)
	}
	if len(raw.Tags) == 0 {
		return nil, badContent(op, "no tags field")
	}
	var tags []string
	if err := json.Unmarshal(raw.Tags, &tags); err != nil {
		return nil, badContent(op, "tags: %w", err)
	}
	for _, t := range tags {
		if !tagPattern.MatchString(t) {
			return nil, badContent(op, "invalid tag %q", t)
		}
	}
	if tags == nil {
		tags = []string{}
	}
	return tags, nil
}

// ParseReferrers reads a referrers answer, which the distribution spec
// makes an OCI image index, and returns it re-encoded. Each descriptor must
// name a manifest a client could fetch: a valid media type and digest, and
// a size. Fields a referrers index has no use for (subject, a top-level
// artifactType) and unknown ones are dropped.
//
// It is exported for the cache, which also holds referrers indexes read
// through the tag schema: those reach a client re-encoded too.
func ParseReferrers(body []byte) ([]byte, error) {
	const op = "parse referrers"
	var raw struct {
		SchemaVersion *int              `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Manifests     json.RawMessage   `json:"manifests"`
		Annotations   map[string]string `json:"annotations,omitempty"`
	}
	if err := decodeOne(body, &raw); err != nil {
		return nil, badContent(op, "not an image index: %w", err)
	}
	if raw.SchemaVersion == nil || *raw.SchemaVersion != 2 {
		return nil, badContent(op, "schemaVersion is not 2")
	}
	if raw.MediaType != v1.MediaTypeImageIndex {
		return nil, badContent(op, "mediaType %q, want %s", raw.MediaType, v1.MediaTypeImageIndex)
	}
	if len(raw.Manifests) == 0 {
		return nil, badContent(op, "no manifests field")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw.Manifests, &items); err != nil {
		return nil, badContent(op, "manifests: %w", err)
	}
	descs := make([]v1.Descriptor, 0, len(items))
	for i, item := range items {
		d, err := parseDescriptor(item)
		if err != nil {
			return nil, badContent(op, "manifests[%d]: %w", i, err)
		}
		descs = append(descs, d)
	}
	idx := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: descs, Annotations: raw.Annotations}
	idx.SchemaVersion = 2
	out, err := json.Marshal(idx)
	if err != nil {
		return nil, fmt.Errorf("encode referrers: %w", err)
	}
	return out, nil
}

// parseDescriptor reads one descriptor of a referrers index. Size is
// required: a zero value the JSON did not hold is not a size.
func parseDescriptor(item json.RawMessage) (v1.Descriptor, error) {
	var req struct {
		Size *int64 `json:"size"`
	}
	var d v1.Descriptor
	if err := json.Unmarshal(item, &req); err != nil {
		return v1.Descriptor{}, err
	}
	if err := json.Unmarshal(item, &d); err != nil {
		return v1.Descriptor{}, err
	}
	if !mediaTypePattern.MatchString(d.MediaType) {
		return v1.Descriptor{}, fmt.Errorf("invalid mediaType %q", d.MediaType)
	}
	if d.ArtifactType != "" && !mediaTypePattern.MatchString(d.ArtifactType) {
		return v1.Descriptor{}, fmt.Errorf("invalid artifactType %q", d.ArtifactType)
	}
	if _, err := digest.Parse(string(d.Digest)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("digest %q: %w", d.Digest, err)
	}
	if req.Size == nil || *req.Size < 0 {
		return v1.Descriptor{}, errors.New("no valid size")
	}
	return d, nil
}

// checkToken refuses a bearer token that cannot be sent as one: net/http
// would refuse the header (control characters, a newline that would split
// it) and a space or non-ASCII byte would make it another scheme's
// parameters or nothing a registry reads. Real tokens (JWTs, opaque
// base64) are printable ASCII.
func checkToken(tok string) error {
	if tok == "" {
		return badContent("authenticate", "token response without a token")
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c > '~' {
			return badContent("authenticate", "token with byte %#x at %d: not a valid header value", c, i)
		}
	}
	return nil
}
