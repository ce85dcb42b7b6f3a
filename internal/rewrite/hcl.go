package rewrite

// HCL: hclwrite's tree finds the image attributes (and image items of
// object constructors); their string token's
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
		for name, a := range b.Attributes() {
			toks := a.Expr().BuildTokens(nil)
			if name == "image" {
				refs = append(refs, hclRef(src, offsets, toks))
				continue
			}
			for _, item := range objectImages(toks) {
				refs = append(refs, hclRef(src, offsets, item))
			}
		}
		for _, blk := range b.Blocks() {
			walk(blk.Body())
		}
	}
	walk(file.Body())
	return refs, nil
}

// objectImages finds image = "..." items of object constructors inside an
// expression, as in ECS task definitions:
//
//	container_definitions = jsonencode([{ name = "app", image = "nginx:1.25" }])
//
// Only an item that is a lone string literal counts: the key starts an
// item (after {, a comma or a newline) and the string ends it.
func objectImages(toks hclwrite.Tokens) []hclwrite.Tokens {
	var out []hclwrite.Tokens
	for i := 1; i+4 < len(toks); i++ {
		t := toks[i]
		if t.Type != hclsyntax.TokenIdent || string(t.Bytes) != "image" {
			continue
		}
		switch toks[i-1].Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenComma, hclsyntax.TokenNewline:
		default:
			continue
		}
		if eq := toks[i+1].Type; eq != hclsyntax.TokenEqual && eq != hclsyntax.TokenColon {
			continue
		}
		if toks[i+2].Type != hclsyntax.TokenOQuote || toks[i+3].Type != hclsyntax.TokenQuotedLit || toks[i+4].Type != hclsyntax.TokenCQuote {
			continue
		}
		if i+5 < len(toks) {
			switch toks[i+5].Type {
			case hclsyntax.TokenComma, hclsyntax.TokenNewline, hclsyntax.TokenCBrace, hclsyntax.TokenComment:
			default:
				continue
			}
		}
		out = append(out, toks[i+2:i+5])
	}
	return out
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
