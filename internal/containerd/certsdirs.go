package containerd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/multiproxy/multiproxy/internal/config"
)

// checkCertsDirs looks at the hosts.toml files config_path leads to.
func (c *checker) checkCertsDirs(configPath string, pathLine int) {
	var dirs []string
	for _, d := range filepath.SplitList(configPath) {
		if d == "" {
			continue
		}
		if c.opts.Root != "" && filepath.IsAbs(d) {
			d = filepath.Join(c.opts.Root, d)
		}
		dirs = append(dirs, d)
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			c.finding(Warning, CodeCertsDirMissing, pathLine,
				fmt.Sprintf("config_path directory %s does not exist: containerd finds no hosts.toml there", d),
				"create it with `multiproxy containerd hosts --address HOST --out "+d+"`")
		}
	}
	c.report.CertsDirs = dirs

	hostsFiles := c.readHostsFiles(dirs)
	for _, u := range c.opts.Upstreams {
		c.checkUpstream(u, dirs, hostsFiles, pathLine)
	}
	if c.opts.Probe {
		c.report.Findings = append(c.report.Findings, probeMirrors(c.ctx, hostsFiles, c.opts.ProbeTimeout)...)
	}
}

// hostsFile is one parsed <certs.d>/<dir>/hosts.toml.
type hostsFile struct {
	path    string
	dir     string // the registry directory's name
	doc     *tomlDoc
	mirrors []mirrorEntry
}

type mirrorEntry struct {
	url          string
	line         int
	overridePath bool
	skipVerify   bool
	caFiles      []string
}

// readHostsFiles parses every hosts.toml below dirs, reporting the ones
// containerd would silently discard.
func (c *checker) readHostsFiles(dirs []string) map[string]*hostsFile {
	files := map[string]*hostsFile{}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue // reported as certs-dir-missing
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			path := filepath.Join(dir, e.Name(), "hosts.toml")
			data, err := os.ReadFile(path)
			if err != nil || len(data) == 0 {
				continue // containerd then uses the directory's certificate files only
			}
			hf := &hostsFile{path: path, dir: e.Name()}
			doc, err := parseTOML(data)
			if err != nil {
				line := 0
				var pe *parseError
				if errors.As(err, &pe) {
					line = pe.line
				}
				c.report.add(Finding{Severity: Error, Code: CodeInvalidHosts, File: path, Line: line, Text: lineText(data, line),
					Message: "hosts.toml does not parse (" + err.Error() + "): containerd logs \"failed to decode hosts.toml\" and ignores the file, so this registry bypasses its mirrors",
					Fix:     "correct the file, or regenerate it with `multiproxy containerd hosts --force`"})
				files[path] = hf
				continue
			}
			hf.doc = doc
			hosts := lookupTable(doc.tree, "host")
			for _, h := range hostOrder(doc) {
				t, _ := hosts[h].(map[string]any)
				m := mirrorEntry{url: h, line: doc.lineOf("host", h)}
				m.overridePath, _ = t["override_path"].(bool)
				m.skipVerify, _ = t["skip_verify"].(bool)
				switch ca := t["ca"].(type) {
				case string:
					m.caFiles = []string{ca}
				case []any:
					m.caFiles = stringList(ca)
				}
				for i, f := range m.caFiles {
					if !filepath.IsAbs(f) {
						m.caFiles[i] = filepath.Join(filepath.Dir(path), f)
					}
				}
				hf.mirrors = append(hf.mirrors, m)
			}
			if len(hosts) == 0 && (c.opts.Version == "" || c.opts.Version == V16) {
				c.report.add(Finding{Severity: Warning, Code: CodeHostsWithoutHost, File: path,
					Message: "no [host.\"...\"] table: containerd 1.6 rejects such a file (\"invalid `host` tree\") and ignores it, server included",
					Fix:     "add the mirror as a [host.\"http://HOST:PORT\"] table, or delete the file if it only repeats the default"})
			}
			if e.Name() == "_default" {
				c.checkDefault(hf)
			}
			files[path] = hf
		}
	}
	return files
}

// hostOrder lists [host."..."] tables in file order, the order containerd
// tries them in.
func hostOrder(doc *tomlDoc) []string {
	var out []string
	for _, e := range doc.exprs {
		if len(e.path) >= 2 && e.path[0] == "host" && !slices.Contains(out, e.path[1]) {
			out = append(out, e.path[1])
		}
	}
	return out
}

// checkDefault flags a _default/hosts.toml that sends every registry to a
// port multiproxy serves one upstream on: the hosts.toml form of the
// wildcard-mirror mistake.
func (c *checker) checkDefault(hf *hostsFile) {
	for _, m := range hf.mirrors {
		port := urlPort(m.url)
		for _, u := range c.opts.Upstreams {
			if port != "" && port == listenPort(u.Listen) {
				c.report.add(Finding{Severity: Warning, Code: CodeDefaultMirror, File: hf.path, Line: m.line, Text: hf.doc.text(m.line),
					Message: fmt.Sprintf("_default sends every registry without its own directory to %s, which is multiproxy's port for %s only", m.url, u.Name),
					Fix:     "delete _default/hosts.toml and give each registry its own directory: `multiproxy containerd hosts --address HOST`"})
				return
			}
		}
	}
}

// checkUpstream finds the directory containerd would use for u, the way
// containerd looks it up (remotes/docker/config: hostPaths), and checks it
// leads to multiproxy.
func (c *checker) checkUpstream(u config.Upstream, dirs []string, files map[string]*hostsFile, pathLine int) {
	fixCmd := "`multiproxy containerd hosts --address HOST --out " + firstDir(strings.Join(dirs, string(filepath.ListSeparator))) + "`"
	var found string
	for _, root := range dirs {
		for _, name := range hostPaths(u.Name) {
			p := filepath.Join(root, name)
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				found = p
				break
			}
		}
		if found != "" {
			break
		}
	}
	switch {
	case found == "":
		c.finding(Warning, CodeMissingHosts, pathLine,
			fmt.Sprintf("multiproxy upstream %s has no hosts.toml under %s: its pulls bypass the cache", u.Name, strings.Join(dirs, ", ")),
			"write it with "+fixCmd)
		return
	case filepath.Base(found) == "_default":
		c.finding(Warning, CodeMissingHosts, pathLine,
			fmt.Sprintf("multiproxy upstream %s has no directory of its own under %s, so containerd uses %s for it", u.Name, filepath.Dir(found), found),
			"write it with "+fixCmd)
		return
	case filepath.Base(found) != u.Name:
		if _, err := os.Stat(filepath.Join(filepath.Dir(found), u.Name)); err == nil {
			c.report.add(Finding{Severity: Warning, Code: CodeShadowedHosts, File: filepath.Join(found, "hosts.toml"),
				Message: fmt.Sprintf("containerd reads %s in preference to %s, so the latter has no effect", found, filepath.Join(filepath.Dir(found), u.Name)),
				Fix:     "delete whichever of the two is stale"})
		}
	}
	hf := files[filepath.Join(found, "hosts.toml")]
	if hf == nil {
		c.finding(Warning, CodeMissingHosts, pathLine,
			fmt.Sprintf("%s has no hosts.toml: containerd pulls %s straight from the registry, bypassing the cache", found, u.Name),
			"write it with "+fixCmd)
		return
	}
	if hf.doc == nil {
		return // invalid-hosts already reported
	}
	want := listenPort(u.Listen)
	for _, m := range hf.mirrors {
		if urlPort(m.url) == want {
			return
		}
	}
	c.report.add(Finding{Severity: Warning, Code: CodeStaleHosts, File: hf.path,
		Message: fmt.Sprintf("no mirror on port %s, where multiproxy serves %s: pulls go to %s", want, u.Name, orNone(mirrorList(hf.mirrors))),
		Fix:     "regenerate it with " + fixCmd + " (add --force if it was edited by hand)"})
}

// hostPaths are the directories containerd tries for a registry, in order.
func hostPaths(registry string) []string {
	var out []string
	if alt := hostDirectory(registry); alt != registry {
		out = append(out, alt)
	}
	return append(out, registry, "_default")
}

func mirrorList(ms []mirrorEntry) string {
	urls := make([]string, len(ms))
	for i, m := range ms {
		urls[i] = m.url
	}
	return strings.Join(urls, ", ")
}

func urlPort(raw string) string {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "http" {
		return "80"
	}
	return "443"
}

func listenPort(listen string) string {
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	if _, err := strconv.Atoi(p); err != nil {
		return ""
	}
	return p
}
