// Package imageref finds the image references a rollout will pull: in
// Kubernetes manifests (what `helm template`, `kustomize build` or
// `kubectl get -o yaml|json` print) and in plain list files.
//
// Manifests are not read by kind. Every mapping of every document is
// searched for the three container lists of a pod spec (containers,
// initContainers, ephemeralContainers), so pods, every workload template,
// CronJobs, `kind: List` and custom resources that embed a pod template
// are all covered by one rule. Only the `image` of an entry of those lists
// is taken: `status.containerStatuses[].image` and the like are what ran,
// not what the manifest asks for.
package imageref

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/distribution/reference"
	"go.yaml.in/yaml/v3"
)

// containerLists are the keys of a pod spec whose entries carry an image.
var containerLists = map[string]bool{
	"containers":          true,
	"initContainers":      true,
	"ephemeralContainers": true,
}

// Set collects references in first-seen order. Two spellings of one image
// ("nginx" and "docker.io/library/nginx:latest") count once: the first
// spelling is kept, since that is what the user wrote.
type Set struct {
	seen map[string]bool
	refs []string
}

// Add parses ref and adds it unless an equal reference is in the set.
func (s *Set) Add(ref string) error {
	key, err := normalize(ref)
	if err != nil {
		return err
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	if !s.seen[key] {
		s.seen[key] = true
		s.refs = append(s.refs, ref)
	}
	return nil
}

// List returns the references in the order they were first added.
func (s *Set) List() []string { return s.refs }

// Len is the number of distinct references.
func (s *Set) Len() int { return len(s.refs) }

// normalize gives the key under which equal references meet: the
// registry and path a client would pull, with the tag Kubernetes defaults
// to (latest) when neither tag nor digest is given.
func normalize(ref string) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("invalid reference %q: %w", ref, err)
	}
	return reference.TagNameOnly(named).String(), nil
}

// FromList reads one reference per line. Blank lines and comments are
// ignored: a '#' that starts a line or follows a space or tab. name is the
// file's name for errors.
func FromList(name string, r io.Reader) ([]string, error) {
	return fromList(name, r, nil)
}

// fromList is FromList; with bad set, an invalid reference is passed to
// bad and left out instead of failing the list.
func fromList(name string, r io.Reader, bad func(error)) ([]string, error) {
	var s Set
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		for i := 0; i < len(text); i++ {
			if text[i] == '#' && (i == 0 || text[i-1] == ' ' || text[i-1] == '\t') {
				text = text[:i]
				break
			}
		}
		fields := strings.Fields(text)
		switch len(fields) {
		case 0:
			continue
		case 1:
		default:
			return nil, fmt.Errorf("%s:%d: %d words, want one image reference per line", name, line, len(fields))
		}
		if err := s.Add(fields[0]); err != nil {
			err = fmt.Errorf("%s:%d: %w", name, line, err)
			if bad == nil {
				return nil, err
			}
			bad(err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: line %d: %w", name, line+1, err)
	}
	return s.List(), nil
}

// FromFile reads a file that is either a list of references or
// Kubernetes manifests, told apart by content (IsManifests), so that one
// setting (warm.lists[].from) takes what `helm template` prints as well as
// a hand-written list. With bad set, an invalid reference is passed to
// bad and left out, so that one typo does not stop a scheduled warm of
// every other image; a file that cannot be parsed at all still fails.
func FromFile(name string, r io.Reader, bad func(error)) ([]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if IsManifests(data) {
		return fromManifests(name, data, bad)
	}
	return fromList(name, bytes.NewReader(data), bad)
}

// IsManifests tells Kubernetes manifests from a list of references: JSON,
// or YAML with a line that starts an object's apiVersion, kind or items
// (a `kind: List`). Deciding by lines rather than by parsing keeps a
// manifest with a syntax error a manifest, so that its error is YAML's
// rather than "2 words on line 1". A reference can never be such a line.
func IsManifests(data []byte) bool {
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if isJSON(data) {
		return true
	}
	for line := range bytes.Lines(data) {
		line = bytes.TrimLeft(line, " \t")
		line = bytes.TrimPrefix(line, []byte("- "))
		for _, key := range []string{"apiVersion:", "kind:", "items:"} {
			if bytes.HasPrefix(line, []byte(key)) {
				return true
			}
		}
	}
	return false
}

// FromManifests reads a stream of Kubernetes objects, YAML documents
// separated by `---` or JSON values one after another, and returns the
// images of their pod specs. name is the stream's name for errors, which
// also give the document's number (from 1) and line.
func FromManifests(name string, r io.Reader) ([]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return fromManifests(name, data, nil)
}

// fromManifests is FromManifests; bad is as for fromList.
func fromManifests(name string, data []byte, bad func(error)) ([]string, error) {
	var err error
	// Editors on Windows start a file with a byte order mark; JSON
	// decoding does not skip it.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	f := finder{name: name, bad: bad}
	if isJSON(data) {
		err = f.jsonStream(data)
	} else {
		err = f.yamlStream(data)
	}
	if err != nil {
		return nil, err
	}
	return f.set.List(), nil
}

// isJSON tells a JSON stream from YAML. JSON is YAML too, but JSON values
// written one after another without `---` (as `jq -c` prints them) are
// not one YAML stream.
func isJSON(data []byte) bool {
	data = bytes.TrimLeft(data, " \t\r\n")
	return len(data) > 0 && (data[0] == '{' || data[0] == '[')
}

type finder struct {
	name string
	bad  func(error) // nil: an invalid reference fails the stream
	set  Set
	doc  int // the document being read, from 1
	base int // line of the document's first line in the stream, minus 1
}

func (f *finder) yamlStream(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		f.doc++
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			// yaml's message carries the line in the whole stream.
			return fmt.Errorf("%s: document %d: %w", f.name, f.doc, err)
		}
		if err := f.walk(&n); err != nil {
			return err
		}
	}
}

func (f *finder) jsonStream(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		f.doc++
		start := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: line %d: %w", f.name, f.doc, lineAt(data, errOffset(err, dec.InputOffset())), err)
		}
		// The value starts after the whitespace that preceded it.
		start += int64(len(data[start:]) - len(bytes.TrimLeft(data[start:], " \t\r\n")))
		f.base = lineAt(data, start) - 1
		var n yaml.Node
		if err := yaml.Unmarshal(raw, &n); err != nil {
			return fmt.Errorf("%s: document %d: %w", f.name, f.doc, err)
		}
		if err := f.walk(&n); err != nil {
			return err
		}
	}
}

// errOffset is where a JSON error happened, as precisely as it says.
func errOffset(err error, fallback int64) int64 {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return se.Offset
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Offset
	}
	return fallback
}

func lineAt(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// walk searches n and everything below it for container lists.
func (f *finder) walk(n *yaml.Node) error {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if err := f.walk(c); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && containerLists[k.Value] && deref(v).Kind == yaml.SequenceNode {
				if err := f.containers(k.Value, deref(v)); err != nil {
					return err
				}
				continue
			}
			if err := f.walk(v); err != nil {
				return err
			}
		}
	}
	return nil
}

// containers takes the image of each entry of a container list.
func (f *finder) containers(list string, seq *yaml.Node) error {
	for i, c := range seq.Content {
		c = deref(c)
		if c.Kind != yaml.MappingNode {
			continue
		}
		for j := 0; j+1 < len(c.Content); j += 2 {
			k, v := c.Content[j], c.Content[j+1]
			if k.Value != "image" {
				continue
			}
			line := v.Line
			v = deref(v)
			where := fmt.Sprintf("%s: document %d: line %d: %s[%d].image", f.name, f.doc, f.base+line, list, i)
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("%s: not a string", where)
			}
			// An empty image is left for the API server to refuse; there
			// is nothing to warm.
			if v.Tag == "!!null" || strings.TrimSpace(v.Value) == "" {
				continue
			}
			if err := f.set.Add(strings.TrimSpace(v.Value)); err != nil {
				err = fmt.Errorf("%s: %w", where, err)
				if f.bad == nil {
					return err
				}
				f.bad(err)
			}
		}
	}
	return nil
}

// deref follows a YAML alias (*name) to its anchored node. The walk
// itself does not follow aliases: every anchored node is walked where it
// is defined, and following them could multiply the work (a "billion
// laughs" document). Only a container list, its entries and an image,
// which may be aliases of nodes defined elsewhere, are followed, one step.
func deref(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}
