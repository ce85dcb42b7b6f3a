package config

import (
	"fmt"
	"os"
	"strings"

	"github.com/robfig/cron/v3"
)

// ParsePlatform checks an os/arch[/variant] platform and returns its
// parts; variant is "" when absent.
func ParsePlatform(s string) (os, arch, variant string, err error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return "", "", "", fmt.Errorf("%q is not a platform: want os/arch or os/arch/variant, e.g. linux/arm64/v8", s)
	}
	for _, p := range parts {
		if p == "" || strings.TrimSpace(p) != p {
			return "", "", "", fmt.Errorf("%q is not a platform: want os/arch or os/arch/variant, e.g. linux/arm64/v8", s)
		}
	}
	if len(parts) == 3 {
		variant = parts[2]
	}
	return parts[0], parts[1], variant, nil
}

// validate checks the warm section. A list's file must exist now, so that
// a misspelt path stops the start rather than every scheduled warm; it is
// read again at each warm, so that a CI job may rewrite it.
func (w Warm) validate() []error {
	var errs []error
	for i, p := range w.Platforms {
		if _, _, _, err := ParsePlatform(p); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("warm.platforms[%d]", i), "%v", err))
		}
	}
	if w.MinRemaining < 0 {
		errs = append(errs, fieldErr("warm.min_remaining", "must not be negative, got %d", w.MinRemaining))
	}
	if w.Concurrency < 0 {
		errs = append(errs, fieldErr("warm.concurrency", "must be positive, got %d", w.Concurrency))
	}
	for i, l := range w.Lists {
		field := func(name string) string { return fmt.Sprintf("warm.lists[%d].%s", i, name) }
		if strings.TrimSpace(l.From) == "" {
			errs = append(errs, fieldErr(field("from"), "required: a file of image references or Kubernetes manifests"))
		} else if fi, err := os.Stat(l.From); err != nil {
			// *fs.PathError names the path and the reason.
			errs = append(errs, &ValidationError{Field: field("from"), Msg: err.Error(), err: err})
		} else if fi.IsDir() {
			errs = append(errs, fieldErr(field("from"), "%s is a directory, want a file of image references or Kubernetes manifests", l.From))
		}
		if l.Schedule == "" {
			errs = append(errs, fieldErr(field("schedule"), "required: a cron expression such as \"0 3 * * *\""))
		} else if _, err := cron.ParseStandard(l.Schedule); err != nil {
			errs = append(errs, fieldErr(field("schedule"), "invalid cron expression %q: %v", l.Schedule, err))
		}
	}
	return errs
}
