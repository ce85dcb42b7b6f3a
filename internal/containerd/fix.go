package containerd

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// FixOptions configure Fix.
type FixOptions struct {
	// Upstreams get a hosts.toml each, pointing at Hosts.Address.
	Upstreams []config.Upstream
	// Hosts says where the cache is. Its Version, if empty, follows the
	// config: 2.x for a version 3 file, DefaultVersion otherwise.
	Hosts HostsOptions
}

// FixResult is a migrated config.toml and the hosts.toml set it needs.
type FixResult struct {
	// Config is the new config.toml. Everything but the registry settings
	// is kept byte for byte, comments included.
	Config []byte
	// Changed is false when Config equals the input.
	Changed bool
	// CertsDir is the config_path directory the hosts files belong in.
	CertsDir string
	// Hosts are multiproxy's upstreams, followed by legacy mirrors of
	// other registries migrated out of config.toml.
	Hosts []HostsFile
	// Notes say what was moved or dropped, for the user to review.
	Notes []string
}

// Fix migrates a containerd config.toml to config_path: it deletes every
// registry.mirrors entry and registry.configs.<host>.tls table, sets
// config_path (keeping one that is already set), renames a registry table
// filed under another config version's plugin name, and turns what it
// removed into hosts.toml files. data nil means the file does not exist.
//
// The edit is textual, guided by the parser's positions, so the rest of
// the file keeps its comments and layout. The result is parsed again and
// refused if it is not what containerd needs.
func Fix(data []byte, opts FixOptions) (*FixResult, error) {
	if data == nil {
		return fixMissing(opts)
	}
	doc, err := parseTOML(data)
	if err != nil {
		return nil, fmt.Errorf("cannot fix a config.toml that does not parse: %w", err)
	}
	version := 1
	if v, ok := doc.tree["version"]; ok {
		n, isInt := v.(int64)
		if !isInt || n < 1 || n > 3 {
			return nil, fmt.Errorf("cannot fix config version %v: set version = 2 or 3 first", v)
		}
		version = int(n)
	}
	regPath := registryPaths[version]
	f := &fixer{doc: doc, regPath: regPath, deleted: map[int]bool{}}

	// Mirrors and TLS settings are collected from every layout: once the
	// table is renamed they would become live, and they are the user's
	// intent either way.
	legacy := map[string][]string{}
	var legacyOrder []string
	tlsByHost := map[string]*tlsSettings{}
	var tlsOrder []string
	for _, v := range layoutsFirst(version) {
		p := registryPaths[v]
		for name, m := range lookupTable(doc.tree, append(slices.Clone(p), "mirrors")...) {
			t, _ := m.(map[string]any)
			if _, seen := legacy[name]; !seen {
				legacyOrder = append(legacyOrder, name)
			}
			legacy[name] = append(legacy[name], stringList(t["endpoint"])...)
		}
		f.deletePrefix(append(slices.Clone(p), "mirrors"))
		for name, c := range lookupTable(doc.tree, append(slices.Clone(p), "configs")...) {
			t := tlsTable(c)
			if t == nil {
				continue
			}
			s := &tlsSettings{}
			s.caFile, _ = t["ca_file"].(string)
			s.certFile, _ = t["cert_file"].(string)
			s.keyFile, _ = t["key_file"].(string)
			s.skipVerify, _ = t["insecure_skip_verify"].(bool)
			if _, seen := tlsByHost[name]; !seen {
				tlsOrder = append(tlsOrder, name)
			}
			tlsByHost[name] = s
			f.deletePrefix(append(slices.Clone(p), "configs", name, "tls"))
		}
		if v != version {
			f.renamePlugin(p, regPath)
		}
	}
	slices.Sort(legacyOrder)
	slices.Sort(tlsOrder)

	certsDir := f.setConfigPath()
	f.tidyBlankLines()
	out := f.apply()

	if err := verifyFixed(out, regPath); err != nil {
		return nil, fmt.Errorf("cannot migrate this config.toml automatically (%w); move the registry settings by hand", err)
	}

	hostsOpts := opts.Hosts
	if hostsOpts.Version == "" {
		hostsOpts.Version = DefaultVersion
		if version == 3 {
			hostsOpts.Version = V2
		}
	}
	res := &FixResult{Config: out, Changed: string(out) != string(data), CertsDir: certsDir}
	res.Hosts, res.Notes, err = migratedHosts(opts.Upstreams, hostsOpts, legacy, legacyOrder, tlsByHost, tlsOrder)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// layoutsFirst lists the config versions with version first.
func layoutsFirst(version int) []int {
	out := []int{version}
	for _, v := range []int{1, 2, 3} {
		if v != version {
			out = append(out, v)
		}
	}
	return out
}

// fixMissing writes a minimal config.toml for a node that has none; the
// defaults containerd used until now stay the same.
func fixMissing(opts FixOptions) (*FixResult, error) {
	v := opts.Hosts.Version
	if v == "" {
		v = DefaultVersion
		opts.Hosts.Version = v
	}
	cv := v.configVersion()
	cfg := fmt.Sprintf("version = %d\n\n[%s]\n  config_path = %s\n", cv, tomlPath(registryPaths[cv]), nodefile.TOMLString(DefaultCertsDir))
	hosts, notes, err := migratedHosts(opts.Upstreams, opts.Hosts, nil, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	return &FixResult{Config: []byte(cfg), Changed: true, CertsDir: DefaultCertsDir, Hosts: hosts, Notes: notes}, nil
}

// fixer collects edits against the original bytes and applies them at
// once, so every position it looks up stays valid.
type fixer struct {
	doc     *tomlDoc
	regPath []string
	deleted map[int]bool // 1-based lines
	edits   []edit
}

type edit struct {
	start, end int // byte offsets; start == end inserts
	text       string
}

// deletePrefix removes every table, key and comment at or below prefix,
// whole lines at a time (a trailing comment goes with its key).
func (f *fixer) deletePrefix(prefix []string) {
	for _, e := range f.doc.exprs {
		if !hasPrefix(e.path, prefix) {
			continue
		}
		for l := e.first; l <= e.last; l++ {
			f.deleted[l] = true
		}
		// Comment lines right above a deleted table describe it.
		if e.kind == unstable.Table {
			for l := e.first - 1; l >= 1 && strings.HasPrefix(f.doc.text(l), "#"); l-- {
				f.deleted[l] = true
			}
		}
	}
}

// renamePlugin rewrites the plugin part of the keys of tables filed under
// another version's registry path, so they land at want.
func (f *fixer) renamePlugin(from, want []string) {
	for _, e := range f.doc.exprs {
		if e.kind == unstable.Comment || !hasPrefix(e.path, from) || f.deleted[e.first] {
			continue
		}
		// The plugin name is path[1]; it is among this expression's own
		// key parts only if its table header does not already cover it.
		i := 1
		if e.kind == unstable.KeyValue {
			i = 1 - len(e.table)
		}
		if i < 0 || i >= len(e.keys) {
			continue // inside [plugins."<name>"] itself; verifyFixed reports it
		}
		r := e.keys[i]
		key := tomlKey(want[1])
		// Keep the file's quoting style: containerd 2.x writes 'literal' keys.
		if raw := f.doc.data[r.Offset : r.Offset+r.Length]; len(raw) > 0 && raw[0] == '\'' && !strings.Contains(want[1], "'") {
			key = "'" + want[1] + "'"
		}
		f.edits = append(f.edits, edit{start: int(r.Offset), end: int(r.Offset + r.Length), text: key})
	}
}

// setConfigPath keeps a non-empty config_path, fills in an empty one, or
// adds one, and returns the first directory it names.
func (f *fixer) setConfigPath() string {
	for _, v := range []int{1, 2, 3} {
		key := append(slices.Clone(registryPaths[v]), "config_path")
		for _, e := range f.doc.exprs {
			if e.kind != unstable.KeyValue || !slices.Equal(e.path, key) {
				continue
			}
			if cur, _ := lookupString(f.doc.tree, key...); cur != "" {
				return firstDir(cur)
			}
			if e.value.Length > 0 {
				f.edits = append(f.edits, edit{start: int(e.value.Offset), end: int(e.value.Offset + e.value.Length), text: nodefile.TOMLString(DefaultCertsDir)})
				return DefaultCertsDir
			}
		}
	}

	line := "config_path = " + nodefile.TOMLString(DefaultCertsDir)
	// Into the existing registry table, right below its header.
	for _, e := range f.doc.exprs {
		if e.kind == unstable.Table && f.isRegistryTable(e.path) && !f.deleted[e.first] {
			f.insertAfter(e.last, f.childIndent(e)+line)
			return DefaultCertsDir
		}
	}
	// As a new table at the end of the CRI plugin's tables.
	plugin := f.regPath[:2]
	last, indent := 0, ""
	for _, e := range f.doc.exprs {
		if e.kind == unstable.Comment || !hasPrefix(e.path, plugin) || f.deleted[e.first] {
			continue
		}
		if e.kind == unstable.Table && indent == "" && len(e.path) > len(plugin) {
			indent = f.doc.indentOf(e.first)
		}
		last = max(last, e.last)
	}
	header := "[" + tomlPath(f.regPath) + "]"
	if last > 0 {
		f.insertAfter(last, indent+header+"\n"+indent+"  "+line)
		return DefaultCertsDir
	}
	text := "\n" + header + "\n  " + line + "\n"
	if len(f.doc.data) > 0 && f.doc.data[len(f.doc.data)-1] != '\n' {
		text = "\n" + text
	}
	f.edits = append(f.edits, edit{start: len(f.doc.data), end: len(f.doc.data), text: text})
	return DefaultCertsDir
}

func (f *fixer) isRegistryTable(path []string) bool {
	for _, p := range registryPaths {
		if slices.Equal(path, p) {
			return true
		}
	}
	return false
}

// childIndent guesses the indentation of keys in table e from its first
// key, or indents one step from the header.
func (f *fixer) childIndent(e expr) string {
	for _, x := range f.doc.exprs {
		if x.kind == unstable.KeyValue && slices.Equal(x.table, e.path) && !f.deleted[x.first] {
			return f.doc.indentOf(x.first)
		}
	}
	return f.doc.indentOf(e.first) + "  "
}

func (f *fixer) insertAfter(line int, text string) {
	off := f.doc.lineStart(line + 1)
	if off == len(f.doc.data) && (off == 0 || f.doc.data[off-1] != '\n') {
		text = "\n" + text
	}
	f.edits = append(f.edits, edit{start: off, end: off, text: text + "\n"})
}

// tidyBlankLines also deletes a blank line after a deleted block that
// already had a blank line before it, so removing a table does not leave
// a gap twice as wide, and trailing blank lines a deletion leaves.
func (f *fixer) tidyBlankLines() {
	n := len(f.doc.lines)
	blank := func(l int) bool { return l >= 1 && l <= n && strings.TrimSpace(f.doc.lines[l-1]) == "" }
	for l := 1; l <= n; l++ {
		if !f.deleted[l] || f.deleted[l+1] {
			continue
		}
		start := l
		for start > 1 && f.deleted[start-1] {
			start--
		}
		switch {
		case blank(l+1) && (start == 1 || blank(start-1)):
			f.deleted[l+1] = true
		case l == n:
			// A block deleted at the end of the file takes the blank
			// lines that separated it from the rest.
			for b := start - 1; blank(b); b-- {
				f.deleted[b] = true
			}
		}
	}
}

// apply performs the deletions and edits, last first so earlier offsets
// stay put. At one offset a deletion goes before an insertion, or the
// insertion would be deleted with it.
func (f *fixer) apply() []byte {
	edits := slices.Clone(f.edits)
	for l := range f.deleted {
		edits = append(edits, edit{start: f.doc.lineStart(l), end: f.doc.lineStart(l + 1)})
	}
	slices.SortStableFunc(edits, func(a, b edit) int {
		if a.start != b.start {
			return b.start - a.start
		}
		return (b.end - b.start) - (a.end - a.start)
	})
	out := slices.Clone(f.doc.data)
	for _, e := range edits {
		out = slices.Concat(out[:e.start], []byte(e.text), out[e.end:])
	}
	return out
}

// verifyFixed checks that the migrated file says what containerd needs:
// it parses, has a config_path where this version reads it, and has no
// mirrors or TLS settings left that would make the CRI plugin refuse it.
func verifyFixed(out []byte, regPath []string) error {
	doc, err := parseTOML(out)
	if err != nil {
		return fmt.Errorf("the edited file does not parse: %w", err)
	}
	if p, _ := lookupString(doc.tree, append(slices.Clone(regPath), "config_path")...); p == "" {
		return fmt.Errorf("no config_path under [%s] after the edit", tomlPath(regPath))
	}
	var problems []string
	for v, p := range registryPaths {
		if !slices.Equal(p, regPath) {
			if _, ok := lookup(doc.tree, p...); ok {
				problems = append(problems, fmt.Sprintf("settings remain under version %d's [%s]", v, tomlPath(p)))
			}
		}
		if len(lookupTable(doc.tree, append(slices.Clone(p), "mirrors")...)) > 0 {
			problems = append(problems, "mirrors remain")
		}
		for _, c := range lookupTable(doc.tree, append(slices.Clone(p), "configs")...) {
			if tlsTable(c) != nil {
				problems = append(problems, "configs.tls remains")
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// tlsTable returns the tls table of a registry.configs entry, or nil.
func tlsTable(entry any) map[string]any {
	m, _ := entry.(map[string]any)
	t, _ := m["tls"].(map[string]any)
	return t
}

// migratedHosts builds the hosts.toml set: multiproxy's upstreams, then a
// file per legacy mirror of any other registry, with registry.configs TLS
// settings attached where they applied.
func migratedHosts(ups []config.Upstream, opts HostsOptions, legacy map[string][]string, legacyOrder []string,
	tlsByHost map[string]*tlsSettings, tlsOrder []string,
) ([]HostsFile, []string, error) {
	specs, err := upstreamSpecs(ups, opts)
	if err != nil {
		return nil, nil, err
	}
	var notes []string
	byName := map[string]int{}
	for i, s := range specs {
		byName[s.registry] = i
	}
	for _, name := range legacyOrder {
		endpoints := legacy[name]
		if name == "*" {
			notes = append(notes, fmt.Sprintf("dropped the wildcard mirror (%s): every registry gets its own hosts.toml instead", orNone(redactURLs(endpoints))))
			continue
		}
		if _, ok := byName[name]; ok {
			notes = append(notes, fmt.Sprintf("replaced mirrors.%s (%s) with multiproxy's hosts.toml", tomlKey(name), orNone(redactURLs(endpoints))))
			continue
		}
		if !nodefile.ValidRegistryName(name) {
			notes = append(notes, fmt.Sprintf("dropped mirrors.%s: not a registry host name containerd could look up", tomlKey(name)))
			continue
		}
		s := hostsSpec{
			registry: name,
			origin:   fmt.Sprintf("registry.mirrors.%s in config.toml", tomlKey(name)),
			server:   defaultServer(name),
			version:  opts.Version,
		}
		for _, ep := range endpoints {
			if !strings.Contains(ep, "://") {
				ep = "https://" + ep
			}
			u, err := url.Parse(ep)
			switch {
			case err != nil || u.Host == "":
				notes = append(notes, fmt.Sprintf("dropped endpoint %s of mirrors.%s: not a URL", redactURLs([]string{ep}), tomlKey(name)))
				continue
			case u.User != nil:
				// hosts.toml has no place for credentials in a URL, and
				// they do not belong in a world-readable file anyway.
				notes = append(notes, fmt.Sprintf("dropped endpoint %s of mirrors.%s: credentials in a mirror URL cannot move to hosts.toml; use registry.configs.<host>.auth",
					u.Redacted(), tomlKey(name)))
				continue
			}
			// The legacy list may name the registry itself, often over
			// plain http; in hosts.toml that is server, not a mirror.
			if u.Host == name || (name == "docker.io" && u.Host == "registry-1.docker.io") {
				s.server = strings.TrimSuffix(ep, "/")
				continue
			}
			s.mirrors = append(s.mirrors, ep)
		}
		if len(s.mirrors) == 0 && s.server == defaultServer(name) {
			notes = append(notes, fmt.Sprintf("dropped mirrors.%s: it only named the registry itself, which containerd uses anyway", tomlKey(name)))
			continue
		}
		byName[name] = len(specs)
		specs = append(specs, s)
		notes = append(notes, fmt.Sprintf("moved mirrors.%s to %s/hosts.toml", tomlKey(name), name))
	}
	for _, host := range tlsOrder {
		t := tlsByHost[host]
		if i, ok := byName[host]; ok {
			specs[i].serverTLS = t
			notes = append(notes, fmt.Sprintf("moved configs.%s.tls to %s/hosts.toml (server)", tomlKey(host), host))
			continue
		}
		if attachMirrorTLS(specs, host, t) {
			notes = append(notes, fmt.Sprintf("moved configs.%s.tls to the mirror entries for %s", tomlKey(host), host))
			continue
		}
		if !nodefile.ValidRegistryName(host) {
			notes = append(notes, fmt.Sprintf("dropped configs.%s.tls: not a registry host name", tomlKey(host)))
			continue
		}
		byName[host] = len(specs)
		specs = append(specs, hostsSpec{
			registry:  host,
			origin:    fmt.Sprintf("registry.configs.%s.tls in config.toml", tomlKey(host)),
			server:    defaultServer(host),
			version:   opts.Version,
			serverTLS: t,
		})
		notes = append(notes, fmt.Sprintf("moved configs.%s.tls to %s/hosts.toml", tomlKey(host), host))
	}
	files, err := renderAll(specs)
	return files, notes, err
}

// attachMirrorTLS gives t to every mirror whose host is host.
func attachMirrorTLS(specs []hostsSpec, host string, t *tlsSettings) bool {
	found := false
	for i := range specs {
		for _, m := range specs[i].mirrors {
			if u, err := url.Parse(m); err == nil && u.Host == host {
				if specs[i].mirrorTLS == nil {
					specs[i].mirrorTLS = map[string]*tlsSettings{}
				}
				specs[i].mirrorTLS[m] = t
				found = true
			}
		}
	}
	return found
}

// defaultServer is where containerd pulls a registry from without any
// configuration (remotes/docker/config: ConfigureHosts).
func defaultServer(registry string) string {
	if registry == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}
