package containerd

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/multiproxy/multiproxy/internal/nodefile"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// tomlDoc is a parsed TOML file that remembers where each table and key
// sits, so findings can quote the offending line and fixes can edit the
// text in place. Decoding to a map alone would lose both, and re-encoding
// it would throw away the user's comments and layout.
type tomlDoc struct {
	data  []byte
	lines []string       // without line endings
	tree  map[string]any // the decoded document
	exprs []expr
}

// expr is one top-level TOML expression: a table header, a key/value pair
// or a whole-line comment.
type expr struct {
	kind unstable.Kind
	// path is the full dotted key: the header for tables, the enclosing
	// table plus the key for key/value pairs, the enclosing table for
	// comments.
	path []string
	// table is the enclosing table of a key/value pair or comment.
	table []string
	// first and last are 1-based line numbers; a multi-line array spans
	// several lines.
	first, last int
	// keys are the byte ranges of the key parts, in path order from the
	// start of the header (tables) or of the key (key/value pairs).
	keys []unstable.Range
	// value is the byte range of a key/value pair's value, when the parser
	// reports one (it does for strings and scalars).
	value unstable.Range
}

// parseError is a TOML syntax or type error with its line.
type parseError struct {
	line int
	err  error
}

func (e *parseError) Error() string { return e.err.Error() }
func (e *parseError) Unwrap() error { return e.err }

func parseTOML(data []byte) (*tomlDoc, error) {
	d := &tomlDoc{data: data, lines: splitLines(data)}
	if err := toml.Unmarshal(data, &d.tree); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, &parseError{line: row, err: err}
		}
		return nil, &parseError{err: err}
	}
	if d.tree == nil {
		d.tree = map[string]any{}
	}

	p := unstable.Parser{KeepComments: true}
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		n := p.Expression()
		e := expr{kind: n.Kind}
		switch n.Kind {
		case unstable.Table, unstable.ArrayTable:
			e.path, e.keys = keyOf(n)
			table = e.path
			e.first = p.Shape(e.keys[0]).Start.Line
			e.last = p.Shape(e.keys[len(e.keys)-1]).End.Line
		case unstable.KeyValue:
			key, ranges := keyOf(n)
			e.table = table
			e.path = append(slices.Clone(table), key...)
			e.keys = ranges
			shape := p.Shape(n.Raw)
			e.first, e.last = shape.Start.Line, shape.End.Line
			if v := n.Value(); v.Raw.Length > 0 {
				e.value = v.Raw
			}
		case unstable.Comment:
			e.table = table
			e.path = table
			shape := p.Shape(n.Raw)
			e.first, e.last = shape.Start.Line, shape.End.Line
		default:
			continue
		}
		d.exprs = append(d.exprs, e)
	}
	if err := p.Error(); err != nil {
		// Unmarshal accepted the document, so this would be a disagreement
		// between go-toml's two parsers; say so rather than guess.
		return nil, fmt.Errorf("index TOML: %w", err)
	}
	return d, nil
}

func keyOf(n *unstable.Node) ([]string, []unstable.Range) {
	var path []string
	var ranges []unstable.Range
	for it := n.Key(); it.Next(); {
		k := it.Node()
		path = append(path, string(k.Data))
		ranges = append(ranges, k.Raw)
	}
	return path, ranges
}

func splitLines(data []byte) []string {
	s := strings.ReplaceAll(string(data), "\r\n", "\n")
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// lineOf returns the first line of the first table or key whose path starts
// with prefix, or 0 when the document has none.
func (d *tomlDoc) lineOf(prefix ...string) int {
	for _, e := range d.exprs {
		if e.kind != unstable.Comment && hasPrefix(e.path, prefix) {
			return e.first
		}
	}
	return 0
}

// text is line n without surrounding white space, or "".
func (d *tomlDoc) text(n int) string {
	if n < 1 || n > len(d.lines) {
		return ""
	}
	return strings.TrimSpace(d.lines[n-1])
}

// lineStart is the byte offset at which 1-based line n starts; one past
// the last line is the end of the data.
func (d *tomlDoc) lineStart(n int) int {
	if n <= 1 {
		return 0
	}
	off, line := 0, 1
	for line < n {
		i := bytes.IndexByte(d.data[off:], '\n')
		if i < 0 {
			return len(d.data)
		}
		off += i + 1
		line++
	}
	return off
}

// indentOf returns the leading white space of line n.
func (d *tomlDoc) indentOf(n int) string {
	t := d.lines[n-1]
	return t[:len(t)-len(strings.TrimLeft(t, " \t"))]
}

func hasPrefix(path, prefix []string) bool {
	return len(path) >= len(prefix) && slices.Equal(path[:len(prefix)], prefix)
}

// lookup walks nested tables of a decoded document.
func lookup(tree map[string]any, path ...string) (any, bool) {
	var cur any = tree
	for _, k := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func lookupTable(tree map[string]any, path ...string) map[string]any {
	v, _ := lookup(tree, path...)
	m, _ := v.(map[string]any)
	return m
}

func lookupString(tree map[string]any, path ...string) (string, bool) {
	v, ok := lookup(tree, path...)
	s, isString := v.(string)
	return s, ok && isString
}

// stringList reads a TOML array of strings, skipping anything else.
func stringList(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// tomlKey renders one key part, quoted unless it is a bare key.
func tomlKey(k string) string {
	bare := k != ""
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			bare = false
			break
		}
	}
	if bare {
		return k
	}
	return nodefile.TOMLString(k)
}

// tomlPath renders a dotted key such as plugins."io.containerd.grpc.v1.cri".registry.
func tomlPath(path []string) string {
	parts := make([]string, len(path))
	for i, k := range path {
		parts[i] = tomlKey(k)
	}
	return strings.Join(parts, ".")
}
