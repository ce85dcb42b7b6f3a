// Package rewrite finds the container image references in deployment files
// (Kubernetes manifests, Compose files, Helm values, Terraform HCL) and pins
// them to digests in place, for `multiproxy resolve -w` and `--check`.
//
// A pin must change nothing but the image strings: a reviewer reads the diff
// of a pinned file, and comments, key order, quoting and indentation are part
// of what the team wrote. Re-encoding a parsed YAML tree loses some of that
// (indentation, flow style, blank lines), so the parsers are used only to
// find where each reference is. The new text is spliced into the original
// bytes at that place, in the quoting style it had, and the result is parsed
// again to check that the references read back as intended.
//
// What counts as an image reference:
//   - Kubernetes (a YAML document with apiVersion and kind): the image of
//     every entry of containers, initContainers and ephemeralContainers,
//     wherever the pod spec is nested (Deployment, CronJob, List, ...).
//   - Compose (a YAML document with a services mapping): services.*.image,
//     including through anchors and merge keys.
//   - Helm values (any other YAML document): every key named image whose
//     value is a string ("repo:tag"), or a mapping with a repository and a
//     tag, and optionally a registry and a digest.
//   - HCL (.tf, .tfvars, .hcl files): every attribute named image, in any
//     block however nested, whose value is a plain string literal; and
//     every image = "..." item of an object constructor, as in an ECS
//     task definition's jsonencode([{ image = "..." }]).
//
// A Helm image mapping is pinned in its digest key when it has one (the
// charts that have one build repo@digest or repo:tag@digest from it);
// otherwise the digest is appended to its tag ("1.25@sha256:..."), which the
// usual repository:tag template turns into a valid pinned reference.
package rewrite

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Ref is one image reference found in a file.
type Ref struct {
	// Line is the 1-based line of the text a pin changes.
	Line int
	// Image is the reference as the file has it, e.g.
	// "nginx:1.25@sha256:...". For a Helm image mapping it is assembled
	// from the mapping's registry, repository, tag and digest.
	Image string
	// Problem, if not empty, says why this reference cannot be pinned in
	// place (not a valid reference, an escaped or block string, no tag);
	// it is reported and left alone.
	Problem string

	edit edit
}

// edit says where a pin writes and what.
type edit struct {
	start, end int    // byte span of the text replaced (inside any quotes)
	old        string // src[start:end], checked before splicing
	// field is what the span holds: the whole reference, a Helm tag, or a
	// Helm digest.
	field field
	// insert: the span is empty and a space goes before the new text (a
	// Helm digest key with no value).
	insert bool
}

type field int

const (
	wholeRef field = iota
	helmTag
	helmDigest
)

// Pinnable reports whether the reference can be resolved and pinned: it
// has no Problem and names a tag to resolve. A reference by digest alone
// is pinned already and has no tag that could have moved.
func (r Ref) Pinnable() bool {
	if r.Problem != "" {
		return false
	}
	named, err := reference.ParseNormalizedNamed(r.Image)
	if err != nil {
		return false
	}
	_, tagged := named.(reference.Tagged)
	_, digested := named.(reference.Digested)
	return tagged || !digested
}

// Digest is the digest the reference is pinned to, or "" if none.
func (r Ref) Digest() string {
	_, d, _ := strings.Cut(r.Image, "@")
	return d
}

// Tag is the reference without its digest and with an explicit tag: what is
// resolved to pin it. A reference without a tag means latest, and its pin
// spells that out, so that a later --check still has a tag to compare.
func (r Ref) Tag() string {
	name, _, _ := strings.Cut(r.Image, "@")
	named, err := reference.ParseNormalizedNamed(name)
	if err == nil {
		if _, ok := named.(reference.Tagged); ok {
			return name
		}
	}
	return name + ":latest"
}

// Pinned is the reference as it reads once pinned to digest.
func (r Ref) Pinned(digest string) string {
	return r.Tag() + "@" + digest
}

// text is what a pin to digest writes into the edit's span.
func (r Ref) text(digest string) string {
	switch r.edit.field {
	case helmDigest:
		return digest
	case helmTag:
		tag, _, _ := strings.Cut(r.edit.old, "@")
		return tag + "@" + digest
	default:
		return r.Pinned(digest)
	}
}

// Format is a kind of file this package reads.
type Format int

// The formats, chosen by file name: HCL for .tf, .tfvars and .hcl, YAML
// for everything else (Kubernetes, Compose and Helm values are told apart
// by content, per document).
const (
	YAML Format = iota
	HCL
)

// FormatOf chooses the format of a file by its name.
func FormatOf(path string) Format {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".tf", ".tfvars", ".hcl":
		return HCL
	}
	return YAML
}

// Find lists the image references in src, a file named path, in the order
// they appear.
func Find(path string, src []byte) ([]Ref, error) {
	var refs []Ref
	var err error
	if FormatOf(path) == HCL {
		refs, err = findHCL(path, src)
	} else {
		refs, err = findYAML(src)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	slices.SortFunc(refs, func(a, b Ref) int { return a.edit.start - b.edit.start })
	for i := range refs {
		if refs[i].Problem == "" {
			if _, err := reference.ParseNormalizedNamed(refs[i].Image); err != nil {
				refs[i].Problem = "not a valid image reference"
			}
		}
	}
	return refs, nil
}

// Pin is one reference to pin and the digest its tag resolves to.
type Pin struct {
	Ref    Ref
	Digest string
}

// Apply returns src with every pin's reference pinned to its digest and
// nothing else changed. It parses the result again and fails rather than
// return a file whose references do not read back as pinned.
func Apply(path string, src []byte, pins []Pin) ([]byte, error) {
	before, err := Find(path, src)
	if err != nil {
		return nil, err
	}
	pins = slices.Clone(pins)
	slices.SortFunc(pins, func(a, b Pin) int { return a.Ref.edit.start - b.Ref.edit.start })
	want := map[int]string{} // line -> pinned references expected there
	var out bytes.Buffer
	last := 0
	for _, p := range pins {
		e := p.Ref.edit
		if p.Ref.Problem != "" {
			return nil, fmt.Errorf("%s:%d: cannot pin %s: %s", path, p.Ref.Line, p.Ref.Image, p.Ref.Problem)
		}
		if !p.Ref.Pinnable() {
			return nil, fmt.Errorf("%s:%d: %s is pinned by digest alone and has no tag to pin again", path, p.Ref.Line, p.Ref.Image)
		}
		// The digest comes from a server and is written into a file that
		// is deployed: it must be a digest and nothing more.
		if _, err := digest.Parse(p.Digest); err != nil {
			return nil, fmt.Errorf("%s:%d: pin %s to %q: %w", path, p.Ref.Line, p.Ref.Image, p.Digest, err)
		}
		if e.start < last || e.end > len(src) || string(src[e.start:e.end]) != e.old {
			return nil, fmt.Errorf("%s:%d: %s is not where it was found; was the file changed?", path, p.Ref.Line, p.Ref.Image)
		}
		out.Write(src[last:e.start])
		if e.insert {
			out.WriteByte(' ')
		}
		out.WriteString(p.Ref.text(p.Digest))
		last = e.end
		want[p.Ref.Line] += p.Ref.Pinned(p.Digest) + "\n"
	}
	out.Write(src[last:])
	got, err := Find(path, out.Bytes())
	if err != nil {
		return nil, fmt.Errorf("pinned file does not parse: %w", err)
	}
	if len(got) != len(before) {
		return nil, fmt.Errorf("%s: pinning changed the number of image references", path)
	}
	for _, r := range got {
		if w, ok := want[r.Line]; ok {
			if !strings.Contains(w, r.Image+"\n") {
				return nil, fmt.Errorf("%s:%d: pinned reference reads back as %q", path, r.Line, r.Image)
			}
		}
	}
	return out.Bytes(), nil
}

// notInPlace says a string cannot be edited where it is written.
const notInPlace = "cannot be edited in place"
