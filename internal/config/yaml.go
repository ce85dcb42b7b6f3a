package config

import (
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// WriteYAML writes the effective configuration as YAML, for
// `multiproxy config print`.
//
// The types' yaml tags already do the work: Secret marshals as "<redacted>"
// and is omitted when empty (so a password line appears only when a password
// was loaded), and yaml/v3 writes time.Duration as a string such as "3s".
func (c Config) WriteYAML(w io.Writer) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return fmt.Errorf("encode config as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("encode config as YAML: %w", err)
	}
	return nil
}
