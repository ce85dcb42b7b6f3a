package config

import (
	"crypto/tls"
	"github.com/robfig/cron/v3"

	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// ValidationError is one problem with one configuration field. Field is the
// path as written in the config file, e.g. "upstreams[2].remote".
//
// Load and Validate return every problem they find at once, joined with
// errors.Join; use errors.As to get the first, or walk Unwrap() []error for
// all of them.
type ValidationError struct {
	Field string
	Msg   string
	// Source is the environment variable (MULTIPROXY_SHUTDOWN_TIMEOUT) or
	// flag (--log-level) the value came from, or "" for the file or a
	// default.
	Source string
	// err is the underlying cause, if any, so that errors.Is(err,
	// fs.ErrNotExist) works for an unreadable file.
	err error
}

func (e *ValidationError) Error() string {
	if e.Source != "" {
		return e.Field + ": " + e.Msg + " (from " + e.Source + ")"
	}
	return e.Field + ": " + e.Msg
}

// Unwrap returns the underlying cause, or nil.
func (e *ValidationError) Unwrap() error { return e.err }

func fieldErr(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// validLogLevels are the levels the logger setup understands.
var validLogLevels = []string{"debug", "info", "warn", "error"}

// registryHost matches a registry host as it appears in an image reference:
// dot-separated DNS labels with an optional port. The name also becomes a
// directory under data_dir, so this is what keeps it from being "..", an
// absolute path or containing a separator.
var registryHost = regexp.MustCompile(
	`^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?$`)

// Validate checks the whole configuration and reports every problem found,
// each as a *ValidationError naming the field. It reads ca_file itself, since
// a Config built in code never went through Load.
func (c Config) Validate() error { return errors.Join(c.validate(true)...) }

// validate is Validate, with the check for an empty upstream list left to
// the caller when requireUpstreams is false.
func (c Config) validate(requireUpstreams bool) []error {
	var errs []error
	add := func(e *ValidationError) { errs = append(errs, e) }

	if !slices.Contains(validLogLevels, c.LogLevel) {
		add(fieldErr("log_level", "unknown level %q (want one of %s)", c.LogLevel, strings.Join(validLogLevels, ", ")))
	}
	if c.ShutdownTimeout <= 0 {
		add(fieldErr("shutdown_timeout", "must be positive, got %s", c.ShutdownTimeout))
	}

	// ports maps each listening port to the field that claimed it first.
	// Ports must be unique regardless of host: two upstreams on one port
	// could only differ by bind address, which is fragile and almost
	// always a copy-paste mistake.
	ports := make(map[int]string)
	if port, err := listenPort(c.Admin.Listen); err != nil {
		add(fieldErr("admin.listen", "%v", err))
	} else {
		ports[port] = "admin.listen"
	}

	if c.ListenAll != "" {
		if port, err := listenPort(c.ListenAll); err != nil {
			add(fieldErr("listen_all", "%v", err))
		} else if owner, dup := ports[port]; dup {
			add(fieldErr("listen_all", "port %d already used by %s", port, owner))
		} else {
			ports[port] = "listen_all"
		}
	}

	if msg := checkTLS(c.TLS); msg != "" {
		add(fieldErr("tls", "%s", msg))
	}

	if len(c.Upstreams) == 0 && requireUpstreams {
		add(fieldErr("upstreams", "at least one upstream is required"))
	}

	names := make(map[string]int)    // lower-cased name -> index
	storages := make(map[string]int) // absolute storage path -> index
	for i, u := range c.Upstreams {
		field := func(name string) string { return fmt.Sprintf("upstreams[%d].%s", i, name) }

		switch {
		case u.Name == "":
			add(fieldErr(field("name"), "required"))
		case !registryHost.MatchString(u.Name):
			add(fieldErr(field("name"), "%q is not a registry host name (letters, digits, dots, dashes, optional :port)", u.Name))
		default:
			// Host names are case-insensitive, and two upstreams for one
			// host would make the name ambiguous in image references.
			key := strings.ToLower(u.Name)
			if j, dup := names[key]; dup {
				add(fieldErr(field("name"), "duplicate name %q (also upstreams[%d])", u.Name, j))
			} else {
				names[key] = i
			}
		}

		// In one-port mode an upstream may have no listener of its own.
		if u.Listen != "" || c.ListenAll == "" {
			if port, err := listenPort(u.Listen); err != nil {
				add(fieldErr(field("listen"), "%v", err))
			} else if owner, used := ports[port]; used {
				add(fieldErr(field("listen"), "port %d already used by %s", port, owner))
			} else {
				ports[port] = fmt.Sprintf("upstreams[%d]", i)
			}
		}

		if u.TLS != c.TLS {
			if msg := checkTLS(u.TLS); msg != "" {
				add(fieldErr(field("tls"), "%s", msg))
			}
		}

		if msg := checkRemote(u.Remote); msg != "" {
			add(fieldErr(field("remote"), "%s", msg))
		}
		for j, h := range u.AllowHops {
			if _, err := parseHopPrefix(h); err != nil {
				add(fieldErr(field(fmt.Sprintf("allow_hops[%d]", j)), "want a CIDR such as 10.0.0.0/8 or an address, got %q", h))
			}
		}

		switch {
		case u.Storage.Path == "":
			// Without a name there is nothing to derive it from, and the
			// name error already says so.
			if u.Name != "" {
				add(fieldErr(field("storage"), "required"))
			}
		default:
			abs := absPath(u.Storage.Path)
			if j, dup := storages[abs]; dup {
				add(fieldErr(field("storage"), "%q already used by upstreams[%d]", u.Storage.Path, j))
				break
			}
			storages[abs] = i
		}

		switch {
		case u.PasswordFile != "" && u.PasswordEnv != "":
			add(fieldErr(field("password_file"), "mutually exclusive with password_env"))
		case u.PasswordFile != "" && u.Username == "":
			add(fieldErr(field("username"), "required when password_file is set"))
		case u.PasswordEnv != "" && u.Username == "":
			add(fieldErr(field("username"), "required when password_env is set"))
		}

		if u.CAFile != "" {
			if e := checkCAFile(u.CAFile); e != nil {
				e.Field = field("ca_file")
				add(e)
			}
		}

		if u.Timeout <= 0 {
			add(fieldErr(field("timeout"), "must be positive, got %s", u.Timeout))
		}
		if u.FillTimeout <= 0 {
			add(fieldErr(field("fill_timeout"), "must be positive, got %s", u.FillTimeout))
		}
		if u.TagFreshness < 0 {
			add(fieldErr(field("tag_freshness"), "must not be negative, got %s", u.TagFreshness))
		}
		errs = append(errs, checkTagRules(i, u.TagRules)...)
		errs = append(errs, checkPins(i, u.Pins)...)
		if u.MaxUnused < 0 {
			add(fieldErr(field("max_unused"), "must not be negative, got %s", u.MaxUnused))
		}
		// An inherited top-level value is reported once, as disk.min_free.
		if u.Disk.MinFree != c.Disk.MinFree {
			if msg := u.Disk.MinFree.check(); msg != "" {
				add(fieldErr(field("disk.min_free"), "%s", msg))
			}
		}
		if u.GC.Schedule != "" {
			if _, err := cron.ParseStandard(u.GC.Schedule); err != nil {
				add(fieldErr(field("gc.schedule"), "invalid cron expression %q: %v", u.GC.Schedule, err))
			}
		}
	}
	if msg := c.Disk.MinFree.check(); msg != "" {
		add(fieldErr("disk.min_free", "%s", msg))
	}
	if c.Recycle.Interval < 0 {
		add(fieldErr("recycle.interval", "must not be negative, got %s", c.Recycle.Interval))
	}

	errs = append(errs, c.Warm.validate()...)
	errs = append(errs, nestedStorage(c.Upstreams)...)
	errs = append(errs, c.validateStorage(ports)...)
	return errs
}

// listenPort checks a listen address and returns its port.
func listenPort(addr string) (int, error) {
	if addr == "" {
		return 0, errors.New("required")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("invalid address %q: want host:port or :port", addr)
	}
	// ParseUint rejects signs and service names ("http"), which
	// net.Listen would otherwise resolve behind the user's back.
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q in %q: want a number from 1 to 65535", port, addr)
	}
	return int(n), nil
}

// checkRemote returns what is wrong with an upstream base URL, or "".
// Messages never repeat the URL when it may carry credentials.
func checkRemote(raw string) string {
	if raw == "" {
		return "required"
	}
	if !strings.Contains(raw, "://") {
		return fmt.Sprintf("%q has no scheme: want https://host or http://host", raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// *url.Error quotes the whole input, credentials included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Sprintf("invalid URL: %v", err)
	}
	if u.User != nil {
		return "must not contain credentials: use username with password_file or password_env"
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Sprintf("unsupported scheme %q: want http or https", u.Scheme)
	case u.Hostname() == "":
		return fmt.Sprintf("%q has no host", raw)
	case u.Path != "" && u.Path != "/":
		// The registry API lives at /v2/ under the host; a base path is
		// not something the proxy can honour.
		return fmt.Sprintf("must not have a path, got %q", u.Path)
	case u.RawQuery != "" || u.ForceQuery:
		return "must not have a query"
	case u.Fragment != "":
		return "must not have a fragment"
	}
	return ""
}

// checkCAFile makes sure a CA bundle is usable now rather than at the first
// TLS handshake with the upstream. The caller sets Field.
func checkCAFile(path string) *ValidationError {
	pem, err := os.ReadFile(path)
	if err != nil {
		return &ValidationError{Msg: err.Error(), err: err}
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return &ValidationError{Msg: fmt.Sprintf("no PEM certificates in %s", path)}
	}
	return nil
}

// nestedStorage reports any upstream whose storage lies inside another's:
// garbage collection or a wipe of the outer one would destroy the inner.
func nestedStorage(ups []Upstream) []error {
	var errs []error
	for i, inner := range ups {
		if inner.Storage.Path == "" {
			continue
		}
		for j, outer := range ups {
			if i == j || outer.Storage.Path == "" {
				continue
			}
			if within(absPath(outer.Storage.Path), absPath(inner.Storage.Path)) {
				errs = append(errs, fieldErr(fmt.Sprintf("upstreams[%d].storage", i),
					"%q is inside upstreams[%d].storage %q", inner.Storage.Path, j, outer.Storage.Path))
			}
		}
	}
	return errs
}

// within reports whether child is strictly below parent.
func within(parent, child string) bool {
	rel, err := filepath.Rel(parent, child)
	if err != nil || rel == "." {
		return false
	}
	return rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// absPath makes relative and absolute spellings of one directory compare
// equal; it falls back to the cleaned path if the working directory is gone.
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

// checkTLS says what is wrong with a certificate setting, or "": both files
// or neither, and a pair that loads.
func checkTLS(t TLS) string {
	switch {
	case t.CertFile == "" && t.KeyFile == "":
		return ""
	case t.CertFile == "" || t.KeyFile == "":
		return "set both cert_file and key_file, or neither"
	}
	if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
		return fmt.Sprintf("cannot load the certificate: %v", err)
	}
	return ""
}
