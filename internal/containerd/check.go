package containerd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
)

// DefaultConfigFile is containerd's default config.toml.
const DefaultConfigFile = "/etc/containerd/config.toml"

// Severity ranks a finding. Only errors make `containerd check` fail.
type Severity int

// Severities, least severe first.
const (
	Info Severity = iota
	Warning
	Error
)

func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	default:
		return "error"
	}
}

// Finding codes, stable for scripts and tests.
const (
	CodeInvalidTOML          = "invalid-toml"
	CodeNoConfig             = "no-config"
	CodeConfigVersion        = "config-version"
	CodePluginMismatch       = "plugin-name-mismatch"
	CodeMirrorsWithPath      = "mirrors-with-config-path"
	CodeTLSWithPath          = "tls-with-config-path"
	CodeWildcardMirror       = "wildcard-mirror"
	CodeDeprecatedMirrors    = "deprecated-mirrors"
	CodeNoConfigPath         = "no-config-path"
	CodeCertsDirMissing      = "certs-dir-missing"
	CodeMissingHosts         = "missing-hosts"
	CodeShadowedHosts        = "shadowed-hosts"
	CodeStaleHosts           = "stale-hosts"
	CodeInvalidHosts         = "invalid-hosts"
	CodeHostsWithoutHost     = "hosts-without-host"
	CodeDefaultMirror        = "default-mirror"
	CodeMirrorUnreachable    = "mirror-unreachable"
	containerdMirrorsMessage = "invalid plugin config: `mirrors` cannot be set when `config_path` is provided"
)

// Finding is one thing wrong (or worth knowing) about a node's config.
type Finding struct {
	Severity Severity
	Code     string
	// File and Line locate the offending text; Line is 0 when the finding
	// is about the file as a whole.
	File string
	Line int
	// Text is the offending line, trimmed.
	Text    string
	Message string
	// Fix says what to do about it.
	Fix string
}

// CheckOptions configure Check.
type CheckOptions struct {
	// Upstreams are multiproxy's; each should have a hosts.toml.
	Upstreams []config.Upstream
	// Version is the containerd the node runs, if known; it turns
	// version-dependent hints into errors.
	Version Version
	// Probe asks every hosts.toml mirror for GET /v2/.
	Probe bool
	// ProbeTimeout bounds each probe; 0 means 2 s.
	ProbeTimeout time.Duration
	// Root, if set, is prepended to the absolute certs.d paths config.toml
	// names, to check a node's files from elsewhere (a mounted image, a
	// test directory).
	Root string
}

// Report is the outcome of Check.
type Report struct {
	// Path is the config.toml checked.
	Path string
	// ConfigVersion is its version key (1 when absent), 0 if unparsable.
	ConfigVersion int
	// CertsDirs are the directories config_path names, as read from disk
	// (with CheckOptions.Root applied).
	CertsDirs []string
	Findings  []Finding
}

// Count returns how many findings have severity s.
func (r *Report) Count(s Severity) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == s {
			n++
		}
	}
	return n
}

// registryPaths is where each config.toml version keeps the CRI registry
// settings: v1 names plugins by ID, v2 by full URI, and v3 (containerd 2.x)
// moved image settings to their own plugin.
var registryPaths = map[int][]string{
	1: {"plugins", "cri", "registry"},
	2: {"plugins", "io.containerd.grpc.v1.cri", "registry"},
	3: {"plugins", "io.containerd.cri.v1.images", "registry"},
}

// Check reads a containerd config.toml and the certs.d directories its
// config_path names, and reports what would keep pulls from going through
// multiproxy. A missing config.toml is a finding, not an error: containerd
// then runs on built-in defaults.
func Check(ctx context.Context, path string, opts CheckOptions) (*Report, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		r := &Report{Path: path, ConfigVersion: 2}
		r.add(Finding{Severity: Warning, Code: CodeNoConfig, File: path,
			Message: "config.toml does not exist, so containerd runs on built-in defaults: no config_path, so no hosts.toml is ever read and pulls bypass the cache",
			Fix:     "write one with `multiproxy containerd check --fix --write --address HOST`"})
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read containerd config: %w", err)
	}
	return CheckData(ctx, path, data, opts)
}

// CheckData is Check on config.toml content already read from path.
func CheckData(ctx context.Context, path string, data []byte, opts CheckOptions) (*Report, error) {
	r := &Report{Path: path}
	doc, err := parseTOML(data)
	if err != nil {
		var pe *parseError
		if !errors.As(err, &pe) {
			return nil, err
		}
		r.add(Finding{Severity: Error, Code: CodeInvalidTOML, File: path, Line: pe.line, Text: lineText(data, pe.line),
			Message: "not valid TOML: " + pe.Error() + "; containerd refuses to start with it",
			Fix:     "correct the syntax at this line"})
		return r, nil
	}
	c := checker{ctx: ctx, opts: opts, report: r, doc: doc, path: path}
	c.run()
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		if a.File != b.File {
			// config.toml first, then hosts files in path order.
			if a.File == path || b.File == path {
				return cmp.Compare(boolRank(b.File == path), boolRank(a.File == path))
			}
			return strings.Compare(a.File, b.File)
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return r, nil
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (r *Report) add(f Finding) {
	f.Text = redactLine(f.Text)
	r.Findings = append(r.Findings, f)
}

// secretKey matches keys whose values are credentials: registry.configs
// auth tables (password, auth, identitytoken) and hosts.toml headers
// (Authorization). A finding may quote such a line, for instance when it
// has a syntax error; its value is never printed.
var secretKey = regexp.MustCompile(`(?i)(pass|auth|token|secret)`)

func redactLine(line string) string {
	key, _, ok := strings.Cut(line, "=")
	if !ok || !secretKey.MatchString(key) || strings.HasPrefix(strings.TrimSpace(line), "[") {
		return line
	}
	return strings.TrimSpace(key) + " = <redacted>"
}

type checker struct {
	ctx    context.Context
	opts   CheckOptions
	report *Report
	doc    *tomlDoc
	path   string
}

func (c *checker) finding(sev Severity, code string, line int, msg, fix string) {
	c.report.add(Finding{Severity: sev, Code: code, File: c.path, Line: line, Text: c.doc.text(line), Message: msg, Fix: fix})
}

func (c *checker) run() {
	version, ok := c.configVersion()
	if !ok {
		return
	}
	c.report.ConfigVersion = version
	regPath := registryPaths[version]
	c.versionFindings(version, regPath)

	reg := lookupTable(c.doc.tree, regPath...)
	configPath, _ := lookupString(c.doc.tree, append(slices.Clone(regPath), "config_path")...)
	mirrors := lookupTable(reg, "mirrors")
	pathLine := c.doc.lineOf(append(slices.Clone(regPath), "config_path")...)

	if len(mirrors) > 0 {
		names := sortedKeys(mirrors)
		firstLine := c.firstMirrorLine(regPath, names)
		if configPath != "" {
			c.finding(Error, CodeMirrorsWithPath, firstLine,
				fmt.Sprintf("registry.mirrors (%s) together with config_path: containerd refuses to load its CRI plugin (1.6/1.7: %q; 2.x: \"invalid cri image config: ...\"), so kubelet cannot pull or run anything while ctr still works",
					strings.Join(names, ", "), containerdMirrorsMessage),
				"delete every registry.mirrors table and put each mirror in "+firstDir(configPath)+"/<registry>/hosts.toml; `multiproxy containerd check --fix --address HOST` prints the result")
		} else {
			c.finding(Warning, CodeDeprecatedMirrors, firstLine,
				fmt.Sprintf("registry.mirrors (%s) is deprecated since containerd 1.5 in favour of config_path and hosts.toml, and cannot express a fallback to the real registry or per-registry options", strings.Join(names, ", ")),
				"set config_path and move each mirror into a hosts.toml; `multiproxy containerd check --fix --address HOST` prints the result")
		}
		if ep, ok := mirrors["*"].(map[string]any); ok {
			line := c.doc.lineOf(append(slices.Clone(regPath), "mirrors", "*")...)
			c.finding(Error, CodeWildcardMirror, line,
				fmt.Sprintf("wildcard mirror sends pulls of every registry (ghcr.io, quay.io, registry.k8s.io, ...) to %s; a cache that proxies one upstream (such as a Docker Hub proxy) answers them with errors (ImagePullBackOff) or with a same-named image from the wrong registry",
					orNone(redactURLs(stringList(ep["endpoint"])))),
				"remove mirrors.\"*\" and give each registry its own hosts.toml: `multiproxy containerd hosts --address HOST`")
		}
	}
	if configPath != "" {
		for _, name := range sortedKeys(lookupTable(reg, "configs")) {
			tlsPath := append(slices.Clone(regPath), "configs", name, "tls")
			if _, ok := lookup(c.doc.tree, tlsPath...); ok {
				c.finding(Error, CodeTLSWithPath, c.doc.lineOf(tlsPath...),
					fmt.Sprintf("registry.configs.%s.tls together with config_path: containerd refuses to load its CRI plugin (\"`configs.tls` cannot be set when `config_path` is provided\")", tomlKey(name)),
					"move ca_file, cert_file, key_file and insecure_skip_verify into "+firstDir(configPath)+"/"+name+"/hosts.toml as ca, client and skip_verify; --fix does this")
			}
		}
	}

	if configPath == "" {
		if len(mirrors) == 0 {
			c.finding(Warning, CodeNoConfigPath, pathLine,
				"no registry config_path: containerd reads no hosts.toml, so every pull goes straight to the registries and bypasses the cache",
				fmt.Sprintf("set config_path = %q under [%s]; --fix does this", DefaultCertsDir, tomlPath(regPath)))
		}
		return
	}
	c.checkCertsDirs(configPath, pathLine)
}

// firstMirrorLine is the line of the mirror entry that comes first in the
// file: the entry is what containerd objects to, not an empty parent table.
func (c *checker) firstMirrorLine(regPath, names []string) int {
	first := 0
	for _, n := range names {
		l := c.doc.lineOf(append(slices.Clone(regPath), "mirrors", n)...)
		if l > 0 && (first == 0 || l < first) {
			first = l
		}
	}
	if first == 0 {
		// An inline table: mirrors = { ... } on one key.
		first = c.doc.lineOf(append(slices.Clone(regPath), "mirrors")...)
	}
	return first
}

// configVersion reads the version key; containerd treats a file without
// one as version 1.
func (c *checker) configVersion() (int, bool) {
	v, ok := c.doc.tree["version"]
	if !ok {
		return 1, true
	}
	n, isInt := v.(int64)
	if !isInt || n < 1 || n > 3 {
		c.finding(Error, CodeConfigVersion, c.doc.lineOf("version"),
			fmt.Sprintf("config version %v: containerd knows versions 1 and 2 (1.6, 1.7) or 2 and 3 (2.x)", v),
			"set version = 2 (containerd 1.6/1.7) or version = 3 (containerd 2.x)")
		return 0, false
	}
	return int(n), true
}

func (c *checker) versionFindings(version int, regPath []string) {
	line := c.doc.lineOf("version")
	where := tomlPath(regPath)
	switch version {
	case 1:
		// Version 1 still works on 1.6 and 1.7, only with a deprecation
		// warning in containerd's log; it is this checker's business only
		// where it stops pulls from reaching the cache.
		sev := Info
		if c.opts.Version == V2 {
			sev = Error
		}
		c.finding(sev, CodeConfigVersion, line,
			"config version 1 (no version key): containerd 1.6 logs \"containerd config version `1` has been deprecated and will be removed in containerd v2.0\"; its CRI registry settings live under ["+where+"]",
			"when convenient, set version = 2 and rename plugins.<id> tables to their full names, e.g. plugins.cri to plugins.\"io.containerd.grpc.v1.cri\" (`containerd config migrate` on 2.x)")
	case 2:
		c.finding(Info, CodeConfigVersion, line,
			"config version 2: CRI registry settings live under ["+where+"] (containerd 1.6 and 1.7; 2.x migrates them on load)", "")
	case 3:
		if c.opts.Version == V16 || c.opts.Version == V17 {
			c.finding(Error, CodeConfigVersion, line,
				"config version 3 is for containerd 2.x: containerd "+string(c.opts.Version)+" ignores ["+where+"] (1.6.20 starts anyway with an empty config_path), so no hosts.toml is read",
				"use a version 2 config with [plugins.\"io.containerd.grpc.v1.cri\".registry]")
		} else {
			c.finding(Info, CodeConfigVersion, line,
				"config version 3 (containerd 2.x only; 1.6/1.7 silently ignore its registry settings): CRI registry settings live under ["+where+"]", "")
		}
	}

	// A registry table under another version's plugin name is ignored by
	// containerd, and with it the config_path the user thinks is set.
	for _, v := range []int{1, 2, 3} {
		other := registryPaths[v]
		if v == version {
			continue
		}
		if _, ok := lookup(c.doc.tree, other...); !ok {
			continue
		}
		c.finding(Error, CodePluginMismatch, c.doc.lineOf(other...),
			fmt.Sprintf("[%s] is the version %d layout, but this is a version %d config: containerd ignores this table, so its config_path and mirrors have no effect", tomlPath(other), v, version),
			fmt.Sprintf("move these settings to [%s]; --fix renames the table", where))
	}
}

func firstDir(configPath string) string {
	first, _, _ := strings.Cut(configPath, string(filepath.ListSeparator))
	return first
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func orNone(s string) string {
	if s == "" {
		return "(no endpoint)"
	}
	return s
}

func lineText(data []byte, line int) string {
	lines := splitLines(data)
	if line < 1 || line > len(lines) {
		return ""
	}
	return strings.TrimSpace(lines[line-1])
}
