package rewrite

// YAML: the node tree says where each image scalar is (line and column, in
// characters); the edit is made in the original bytes.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

type yamlFinder struct {
	src        []byte
	lineStarts []int
	seen       map[*yaml.Node]bool // a scalar reached through several aliases is one reference
	refs       []Ref
}

func findYAML(src []byte) ([]Ref, error) {
	f := &yamlFinder{src: src, lineStarts: []int{0}, seen: map[*yaml.Node]bool{}}
	for i, b := range src {
		if b == '\n' {
			f.lineStarts = append(f.lineStarts, i+1)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	for doc := 1; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", doc, err)
		}
		if n.Kind != yaml.DocumentNode || len(n.Content) == 0 {
			continue
		}
		f.document(n.Content[0])
	}
	return f.refs, nil
}

// document tells a Kubernetes object, a Compose file and Helm values apart.
func (f *yamlFinder) document(root *yaml.Node) {
	root = deref(root)
	if root.Kind != yaml.MappingNode {
		return
	}
	switch {
	case lookup(root, "apiVersion") != nil && lookup(root, "kind") != nil:
		f.kubernetes(root)
	case isCompose(root):
		for _, svc := range pairs(deref(lookup(root, "services"))) {
			if s := deref(svc.value); s.Kind == yaml.MappingNode {
				if img := lookup(s, "image"); img != nil {
					f.scalar(img)
				}
			}
		}
	default:
		f.helm(root)
	}
}

// composeKeys are the top-level keys of the Compose specification.
var composeKeys = map[string]bool{"version": true, "name": true, "include": true, "services": true,
	"networks": true, "volumes": true, "configs": true, "secrets": true, "models": true}

// isCompose: a services mapping and nothing but Compose's own top-level
// keys and x- extensions. Helm values may have a services key of their
// own, next to keys Compose does not know, and must then be read as values.
func isCompose(root *yaml.Node) bool {
	svcs := lookup(root, "services")
	if svcs == nil || deref(svcs).Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i < len(root.Content); i += 2 {
		k := root.Content[i].Value
		if !composeKeys[k] && !strings.HasPrefix(k, "x-") {
			return false
		}
	}
	return true
}

// kubernetes finds container lists at any depth: a pod spec sits at a
// different path in each workload kind.
func (f *yamlFinder) kubernetes(n *yaml.Node) {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		for _, p := range pairs(n) {
			switch p.key.Value {
			case "containers", "initContainers", "ephemeralContainers":
				if list := deref(p.value); list.Kind == yaml.SequenceNode {
					for _, c := range list.Content {
						if c = deref(c); c.Kind == yaml.MappingNode {
							if img := lookup(c, "image"); img != nil {
								f.scalar(img)
							}
						}
					}
					continue
				}
			}
			f.kubernetes(p.value)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			f.kubernetes(c)
		}
	}
}

// helm finds every image key: values files nest them anywhere (image,
// controller.image, sidecars[2].image, ...).
func (f *yamlFinder) helm(n *yaml.Node) {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		for _, p := range pairs(n) {
			if p.key.Value == "image" {
				v := deref(p.value)
				switch {
				case v.Kind == yaml.ScalarNode && v.Tag != "!!null" && v.Value != "":
					f.scalar(p.value)
					continue
				case v.Kind == yaml.MappingNode && lookup(v, "repository") != nil:
					f.helmMap(v)
					continue
				}
			}
			f.helm(p.value)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			f.helm(c)
		}
	}
}

// helmMap reads an image: {registry, repository, tag, digest} mapping.
func (f *yamlFinder) helmMap(m *yaml.Node) {
	repo := deref(lookup(m, "repository"))
	if repo.Kind != yaml.ScalarNode || f.seen[repo] {
		return
	}
	f.seen[repo] = true
	image := repo.Value
	if reg := lookup(m, "registry"); reg != nil {
		if r := deref(reg); r.Kind == yaml.ScalarNode && r.Value != "" && r.Tag != "!!null" {
			image = r.Value + "/" + image
		}
	}
	tagNode := lookup(m, "tag")
	if tagNode == nil || deref(tagNode).Kind != yaml.ScalarNode || deref(tagNode).Tag == "!!null" || deref(tagNode).Value == "" {
		line := repo.Line
		f.refs = append(f.refs, Ref{Line: line, Image: image, Problem: "no tag in the image mapping (the chart's default applies)",
			edit: edit{start: f.offset(repo)}})
		return
	}
	tag := deref(tagNode)
	ref := Ref{Line: tag.Line, Image: image + ":" + tag.Value}
	ref.edit, ref.Problem = f.span(tag)
	ref.edit.field = helmTag
	if dn := lookup(m, "digest"); dn != nil {
		d := deref(dn)
		switch {
		case d.Kind != yaml.ScalarNode:
			ref.Problem = "the image mapping's digest is not a string"
		case d.Tag == "!!null" && d.Value == "":
			// digest: (nothing): the pin goes right after the colon.
			ref.Line = d.Line
			ref.edit, ref.Problem = f.emptyValue(m, dn)
			ref.edit.field = helmDigest
		default:
			if d.Value != "" && d.Tag != "!!null" {
				ref.Image += "@" + d.Value
			}
			ref.Line = d.Line
			ref.edit, ref.Problem = f.span(d)
			ref.edit.field = helmDigest
		}
	}
	f.refs = append(f.refs, ref)
}

// scalar records a string that is a whole image reference.
func (f *yamlFinder) scalar(n *yaml.Node) {
	n = deref(n)
	if f.seen[n] {
		return
	}
	f.seen[n] = true
	ref := Ref{Line: n.Line, Image: n.Value}
	if n.Kind != yaml.ScalarNode {
		ref.Problem = "not a string"
		ref.edit.start = f.offset(n)
	} else {
		ref.edit, ref.Problem = f.span(n)
	}
	f.refs = append(f.refs, ref)
}

// offset is the byte offset of a node's line and column (characters).
func (f *yamlFinder) offset(n *yaml.Node) int {
	if n.Line < 1 || n.Line > len(f.lineStarts) {
		return len(f.src)
	}
	off := f.lineStarts[n.Line-1]
	for c := 1; c < n.Column && off < len(f.src); c++ {
		_, w := utf8.DecodeRune(f.src[off:])
		off += w
	}
	return off
}

// span finds a scalar's text in the source: past its anchor and tag, and
// inside its quotes, which a pin keeps.
func (f *yamlFinder) span(n *yaml.Node) (edit, string) {
	off := f.offset(n)
	e := edit{start: off, end: off}
	src := f.src
	// Properties come first: "&anchor !!str 'value'".
	for off < len(src) && (src[off] == '&' || src[off] == '!') {
		for off < len(src) && !isBlank(src[off]) {
			off++
		}
		for off < len(src) && (src[off] == ' ' || src[off] == '\t') {
			off++
		}
	}
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return e, "a block string: " + notInPlace
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		if off >= len(src) || (src[off] != '"' && src[off] != '\'') {
			return e, "quoted string not found where the parser put it"
		}
		off++
	}
	end := off + len(n.Value)
	if end > len(src) || string(src[off:end]) != n.Value {
		// Escapes or a string folded over lines: the written text is not
		// the value, and rewriting it would need the parser's rules.
		return e, "an escaped or multi-line string: " + notInPlace
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 && (end >= len(src) || src[end] != src[off-1]) {
		return e, "an escaped string: " + notInPlace
	}
	return edit{start: off, end: end, old: n.Value}, ""
}

// emptyValue places a pin into "key:" with no value: right after the colon.
func (f *yamlFinder) emptyValue(m, value *yaml.Node) (edit, string) {
	var key *yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i+1] == value {
			key = m.Content[i]
		}
	}
	if key == nil {
		return edit{}, "key not found"
	}
	ke, problem := f.span(key)
	if problem != "" {
		return edit{}, problem
	}
	off := ke.end
	if key.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		off++
	}
	for off < len(f.src) && (f.src[off] == ' ' || f.src[off] == '\t') {
		off++
	}
	if off >= len(f.src) || f.src[off] != ':' {
		return edit{}, "no colon after the digest key"
	}
	off++
	return edit{start: off, end: off, insert: true}, ""
}

func isBlank(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

type pair struct{ key, value *yaml.Node }

// pairs lists a mapping's entries, those merged in with << first, so that
// the mapping's own keys win as YAML has it.
func pairs(m *yaml.Node) []pair {
	var own, merged []pair
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Tag == "!!merge" || (k.Value == "<<" && k.Style == 0) {
			for _, src := range mergeSources(v) {
				merged = append(merged, pairs(src)...)
			}
			continue
		}
		own = append(own, pair{k, v})
	}
	out := merged[:0:0]
	for _, p := range merged {
		if lookupOwn(own, p.key.Value) == nil {
			out = append(out, p)
		}
	}
	return append(out, own...)
}

func mergeSources(v *yaml.Node) []*yaml.Node {
	v = deref(v)
	switch v.Kind {
	case yaml.MappingNode:
		return []*yaml.Node{v}
	case yaml.SequenceNode:
		var out []*yaml.Node
		for _, c := range v.Content {
			if c = deref(c); c.Kind == yaml.MappingNode {
				out = append(out, c)
			}
		}
		return out
	}
	return nil
}

func lookupOwn(ps []pair, key string) *yaml.Node {
	for _, p := range ps {
		if p.key.Value == key {
			return p.value
		}
	}
	return nil
}

// lookup is a mapping's value for key (merge keys included), or nil.
func lookup(m *yaml.Node, key string) *yaml.Node {
	m = deref(m)
	if m.Kind != yaml.MappingNode {
		return nil
	}
	return lookupOwn(pairs(m), key)
}

// deref follows aliases to the node they name: the anchor's text is what a
// pin edits.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}
