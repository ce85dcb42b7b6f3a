package rewrite

// HCL: hclwrite's tree finds the image attributes; their string token's
// offset is the sum of the tokens before it, and the edit is made in the
// original bytes. (Writing the tree back with File.Bytes would also keep
// comments and order, but it spells every run of whitespace as spaces, so
// a file indented with tabs would change beyond its image strings.)

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
)

func findHCL(path string, src []byte) ([]Ref, error) {
	file, diags := hclwrite.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, fmt.Errorf("HCL: %w", diags)
	}
	// Where every token starts in src.
	offsets := map[*hclwrite.Token]int{}
	off := 0
	for _, t := range file.BuildTokens(nil) {
		off += t.SpacesBefore
		offsets[t] = off
		off += len(t.Bytes)
	}
	var refs []Ref
	var walk func(*hclwrite.Body)
	walk = func(b *hclwrite.Body) {
		if a := b.GetAttribute("image"); a != nil {
			refs = append(refs, hclRef(src, offsets, a.Expr().BuildTokens(nil)))
		}
		for _, blk := range b.Blocks() {
			walk(blk.Body())
		}
	}
	walk(file.Body())
	return refs, nil
}

// hclRef reads an image attribute's expression: only "a plain string" is
// a reference that can be pinned; a template or a variable is reported.
func hclRef(src []byte, offsets map[*hclwrite.Token]int, toks hclwrite.Tokens) Ref {
	start := len(src)
	if len(toks) > 0 {
		start = offsets[toks[0]]
	}
	ref := Ref{Line: lineAt(src, start), Image: strings.TrimSpace(string(toks.Bytes())), edit: edit{start: start, end: start}}
	if len(toks) != 3 || toks[0].Type != hclsyntax.TokenOQuote || toks[1].Type != hclsyntax.TokenQuotedLit || toks[2].Type != hclsyntax.TokenCQuote {
		ref.Problem = "not a plain string literal"
		return ref
	}
	lit := toks[1]
	ref.Image = string(lit.Bytes)
	off, ok := offsets[lit]
	if !ok || off+len(lit.Bytes) > len(src) || string(src[off:off+len(lit.Bytes)]) != string(lit.Bytes) {
		ref.Problem = "string not found where the parser put it"
		return ref
	}
	if strings.ContainsAny(ref.Image, `\$%`) {
		ref.Problem = "an escaped string: " + notInPlace
		return ref
	}
	ref.edit = edit{start: off, end: off + len(lit.Bytes), old: ref.Image}
	return ref
}

func lineAt(src []byte, off int) int {
	return strings.Count(string(src[:min(off, len(src))]), "\n") + 1
}
