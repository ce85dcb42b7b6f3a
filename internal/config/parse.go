package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/viper"
	yaml4 "go.yaml.in/yaml/v4"
)

// SyntaxError is a config file that is not valid YAML, at the position where
// the parser found the problem.
type SyntaxError struct {
	// Line and Column are 1-based; 0 when the parser did not say.
	Line, Column int
	Msg          string
	// Context is the construct being parsed and where it began, e.g.
	// "while parsing a flow sequence at line 3, column 19", when that is
	// not the same place; else "".
	Context string
}

func (e *SyntaxError) Error() string {
	s := e.Msg
	switch {
	case e.Line > 0 && e.Column > 0:
		s = fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
	case e.Line > 0:
		s = fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	if e.Context != "" {
		s += " (" + e.Context + ")"
	}
	return s
}

// yamlDecoder parses config files for viper with go.yaml.in/yaml/v4.
//
// viper's own YAML codec uses yaml/v3, whose syntax errors give the 0-based
// line of the enclosing construct rather than the line of the problem: a
// bad indent on line 3 inside a list that starts on line 2 was reported as
// "line 1". yaml/v4 reports the problem's own position (1-based, with the
// column), and the enclosing construct separately.
type yamlDecoder struct{}

// Decoder implements viper.DecoderRegistry.
func (yamlDecoder) Decoder(format string) (viper.Decoder, error) {
	if format != "yaml" && format != "yml" {
		return nil, fmt.Errorf("unsupported config format %q: want YAML", format)
	}
	return yamlDecoder{}, nil
}

// Decode implements viper.Decoder.
func (yamlDecoder) Decode(b []byte, v map[string]any) error {
	if err := yaml4.Unmarshal(b, &v); err != nil {
		return syntaxError(err)
	}
	var doc yaml4.Node
	if err := yaml4.Unmarshal(b, &doc); err != nil {
		return syntaxError(err)
	}
	return refuseLegacyOctal(&doc)
}

// legacyOctal is a plain integer with a leading zero, which yaml/v4 reads
// as YAML 1.1's octal: `max_size: 010` would be 8 bytes.
var legacyOctal = regexp.MustCompile(`^[-+]?0[0-9_]+$`)

// refuseLegacyOctal reports the first integer written with a leading zero.
// Whoever writes `010` in a config file almost always means ten, and
// nothing in the file says otherwise, so the file is refused at that line
// rather than loaded with a value nobody wrote. 0o10 still means octal.
func refuseLegacyOctal(n *yaml4.Node) error {
	if n.Kind == yaml4.ScalarNode && n.Style == 0 && n.ShortTag() == "!!int" && legacyOctal.MatchString(n.Value) {
		sign, digits := "", strings.ReplaceAll(n.Value, "_", "")
		if digits[0] == '-' || digits[0] == '+' {
			sign, digits = digits[:1], digits[1:]
		}
		decimal := strings.TrimLeft(digits, "0")
		if decimal == "" {
			decimal = "0"
		}
		if sign == "-" {
			decimal = "-" + decimal
		}
		return &SyntaxError{Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(
			"%s has a leading zero, which YAML reads as an octal number: write %s, or 0o%s if octal is meant",
			n.Value, decimal, strings.TrimLeft(digits, "0"))}
	}
	for _, c := range n.Content {
		if err := refuseLegacyOctal(c); err != nil {
			return err
		}
	}
	return nil
}

// syntaxError turns yaml/v4's errors into SyntaxErrors, one per problem.
func syntaxError(err error) error {
	var many *yaml4.LoadErrors
	if errors.As(err, &many) && len(many.Errors) > 0 {
		errs := make([]error, len(many.Errors))
		for i, e := range many.Errors {
			errs[i] = fromLoadError(e)
		}
		return errors.Join(errs...)
	}
	var one *yaml4.LoadError
	if errors.As(err, &one) {
		return fromLoadError(one)
	}
	return err
}

func fromLoadError(e *yaml4.LoadError) *SyntaxError {
	se := &SyntaxError{Line: e.Mark.Line, Column: e.Mark.Column, Msg: e.Message}
	if strings.HasSuffix(e.Message, "into map[string]interface {}") {
		// A list or a scalar where the file's keys should be.
		se.Msg = "want a mapping of config keys (data_dir: …, upstreams: …) at the top level"
	}
	if e.ContextMsg != "" && e.ContextMark.Line > 0 && e.ContextMark.Line != e.Mark.Line {
		se.Context = fmt.Sprintf("%s at line %d, column %d", e.ContextMsg, e.ContextMark.Line, e.ContextMark.Column)
	}
	return se
}
