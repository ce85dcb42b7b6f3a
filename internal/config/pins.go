package config

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// PinRef is an image pinned within one upstream: a repository and either a
// tag or a digest.
type PinRef struct {
	Repo   string
	Tag    string
	Digest digest.Digest
}

// String is the ref as written: repo:tag or repo@digest.
func (p PinRef) String() string {
	if p.Digest != "" {
		return p.Repo + "@" + p.Digest.String()
	}
	return p.Repo + ":" + p.Tag
}

// ParsePin reads repo:tag or repo@digest. The repository is the path within
// the upstream (library/nginx, not docker.io/library/nginx): a pin belongs
// to one upstream, which its place in the config or the API request names.
func ParsePin(s string) (PinRef, error) {
	var p PinRef
	name := s
	if repo, dgst, ok := strings.Cut(s, "@"); ok {
		d, err := digest.Parse(dgst)
		if err != nil {
			return PinRef{}, fmt.Errorf("invalid digest in %q: %w", s, err)
		}
		name, p.Digest = repo, d
	} else if i := strings.LastIndexByte(s, ':'); i > strings.LastIndexByte(s, '/') {
		name, p.Tag = s[:i], s[i+1:]
		if _, err := reference.WithTag(mustName(), p.Tag); err != nil {
			return PinRef{}, fmt.Errorf("invalid tag in %q: %w", s, err)
		}
	} else {
		return PinRef{}, fmt.Errorf("%q names no tag or digest: want repo:tag or repo@sha256:…", s)
	}
	if _, err := reference.WithName(name); err != nil {
		return PinRef{}, fmt.Errorf("invalid repository in %q: %w", s, err)
	}
	p.Repo = name
	return p, nil
}

// mustName is any valid name, for checking a tag on its own.
func mustName() reference.Named {
	n, _ := reference.WithName("x")
	return n
}

// checkPins reports pins that are not repo:tag or repo@digest, naming
// upstreams[i].pins[j].
func checkPins(i int, pins []string) []error {
	var errs []error
	for j, s := range pins {
		if _, err := ParsePin(s); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("upstreams[%d].pins[%d]", i, j), "%v", err))
		}
	}
	return errs
}
