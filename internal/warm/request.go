package warm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/multiproxy/multiproxy/internal/config"
)

// Check reports what is wrong with a request before any work is done: no
// images, or a platform that is not os/arch[/variant]. Its message is
// written for the client. A reference that does not parse is not an error
// here: it is skipped and said so, so that one typo in a list of hundreds
// does not refuse the rest.
func (r Request) Check() error {
	if len(r.Images) == 0 {
		return errors.New("images: at least one image reference is required")
	}
	for i, p := range r.Platforms {
		if _, err := parsePlatform(p); err != nil {
			return fmt.Errorf("platforms[%d]: %w", i, err)
		}
	}
	return nil
}

// platform is one os/arch[/variant] a warm fills from an index.
type platform struct{ os, arch, variant string }

func parsePlatform(s string) (platform, error) {
	os, arch, variant, err := config.ParsePlatform(s)
	if err != nil {
		return platform{}, err
	}
	return platform{os: os, arch: arch, variant: variant}, nil
}

func (p platform) String() string {
	s := p.os + "/" + p.arch
	if p.variant != "" {
		s += "/" + p.variant
	}
	return s
}

// matches reports whether an index entry's platform is p. A platform
// named without a variant takes any variant, as containerd does when it
// pulls for linux/arm64; arm64's v8 is its only variant, so it matches no
// variant written at all.
func (p platform) matches(os, arch, variant string) bool {
	if !strings.EqualFold(p.os, os) || !strings.EqualFold(p.arch, arch) {
		return false
	}
	if p.variant == "" || strings.EqualFold(p.variant, variant) {
		return true
	}
	return p.arch == "arm64" && variant == "" && p.variant == "v8"
}
