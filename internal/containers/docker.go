package containers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/nodefile"
)

// DockerCertsDir is where dockerd looks for a registry's certificates
// (HOST:PORT/ca.crt) and, with the containerd image store of Docker Engine
// 28 and later, for its hosts.toml (HOST/hosts.toml).
const DockerCertsDir = "/etc/docker/certs.d"

// DockerDaemonJSON is dockerd's configuration file.
const DockerDaemonJSON = "/etc/docker/daemon.json"

// DaemonJSON is the registry part of Docker's daemon.json.
type DaemonJSON struct {
	// RegistryMirrors are tried for Docker Hub images only (moby#18818).
	RegistryMirrors []string `json:"registry-mirrors,omitempty"`
	// InsecureRegistries lets dockerd speak plain HTTP to these hosts.
	InsecureRegistries []string `json:"insecure-registries,omitempty"`
}

// ErrOnePortHubMirror says why registry-mirrors cannot name the one-port
// listener.
var ErrOnePortHubMirror = errors.New("registry-mirrors cannot point at the one-port listener (listen_all): " +
	"dockerd's classic image store asks a mirror for /v2/library/x without ?ns= or a /docker.io/ path prefix, " +
	"so the one port cannot tell which upstream is meant; give the Docker Hub upstream a listen port of its own, " +
	"or use the containerd image store with `multiproxy docker hosts`")

// Docker derives daemon.json's registry keys from ups: the Docker Hub
// upstream's listener as the one registry mirror, and every plain-HTTP
// listener of the cache as an insecure registry. notes say what the keys
// do not cover, for the operator.
func Docker(ups []config.Upstream, opts Options) (d DaemonJSON, notes []string, err error) {
	eps, err := Endpoints(ups, opts)
	if err != nil {
		return d, nil, err
	}
	hub := slices.IndexFunc(ups, func(u config.Upstream) bool { return u.Serves("docker.io") })
	var mirror Endpoint
	switch {
	case hub < 0:
		notes = append(notes, "no upstream serves Docker Hub, and registry-mirrors is for Docker Hub only: it is left out")
	case opts.Endpoint == "":
		mirror = eps[hub]
	case ups[hub].Listen == "":
		return d, nil, ErrOnePortHubMirror
	default:
		// In one-port mode an upstream may still have a port of its own,
		// which needs no routing.
		host, err := nodefile.NormalizeAddress(opts.Address)
		if err != nil || host == "" {
			return d, nil, errors.Join(errors.New("the cache's address is required (--address)"), err)
		}
		h, err := listenHost(ups[hub], host)
		if err != nil {
			return d, nil, err
		}
		mirror = Endpoint{Upstream: ups[hub].Name, Host: h, TLS: ups[hub].TLS.Enabled()}
		eps = append(eps, mirror)
	}
	if mirror.Host != "" {
		scheme := "http://"
		if mirror.TLS {
			scheme = "https://"
		}
		d.RegistryMirrors = []string{scheme + mirror.Host}
		notes = append(notes, fmt.Sprintf("registry-mirrors covers Docker Hub images only (moby#18818); "+
			"other registries' images reach the cache only through hosts.toml files, which dockerd reads with the containerd image store "+
			"(Docker Engine 28+, the default of fresh 29 installs): `multiproxy docker hosts`"))
	}
	for _, ep := range eps {
		if ep.TLS {
			notes = appendNew(notes, fmt.Sprintf("%s serves HTTPS: a private CA of the cache goes in %s/%s/ca.crt", ep.Host, DockerCertsDir, ep.Host))
		} else {
			d.InsecureRegistries = appendNew(d.InsecureRegistries, ep.Host)
		}
	}
	return d, notes, nil
}

// JSON renders d as a daemon.json of its own.
func (d DaemonJSON) JSON() []byte {
	b, _ := json.MarshalIndent(d, "", "  ")
	return append(b, '\n')
}

// field is one top-level key of a JSON object, in file order.
type field struct {
	key string
	val json.RawMessage
}

// parseObject reads a JSON object's top-level keys in order. Empty input
// is an empty object.
func parseObject(data []byte) ([]field, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		out = append(out, field{key, val})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

// MergeDaemonJSON returns the daemon.json old with d's keys set, every
// other key kept in place: registry-mirrors becomes d's (when d has any),
// and d's insecure registries are added to those old lists. dropped are
// old's registry mirrors that d's replace.
func MergeDaemonJSON(old []byte, d DaemonJSON) (merged []byte, dropped []string, err error) {
	fields, err := parseObject(old)
	if err != nil {
		return nil, nil, fmt.Errorf("daemon.json: %w", err)
	}
	set := func(key string, val []string) {
		raw, _ := json.Marshal(val)
		for i := range fields {
			if fields[i].key == key {
				fields[i].val = raw
				return
			}
		}
		fields = append(fields, field{key, raw})
	}
	get := func(key string) ([]string, error) {
		var out []string
		for _, f := range fields {
			if f.key == key {
				if err := json.Unmarshal(f.val, &out); err != nil {
					return nil, fmt.Errorf("daemon.json: %s: want a list of strings", key)
				}
			}
		}
		return out, nil
	}

	if len(d.RegistryMirrors) > 0 {
		mirrors, err := get("registry-mirrors")
		if err != nil {
			return nil, nil, err
		}
		for _, m := range mirrors {
			if !slices.ContainsFunc(d.RegistryMirrors, func(n string) bool { return sameMirror(m, n) }) {
				dropped = append(dropped, m)
			}
		}
		set("registry-mirrors", d.RegistryMirrors)
	}
	if len(d.InsecureRegistries) > 0 {
		insecure, err := get("insecure-registries")
		if err != nil {
			return nil, nil, err
		}
		for _, h := range d.InsecureRegistries {
			insecure = appendNew(insecure, h)
		}
		set("insecure-registries", insecure)
	}

	var b bytes.Buffer
	b.WriteString("{")
	for i, f := range fields {
		if i > 0 {
			b.WriteString(",")
		}
		key, _ := json.Marshal(f.key)
		b.WriteString("\n  ")
		b.Write(key)
		b.WriteString(": ")
		if err := json.Indent(&b, f.val, "  ", "  "); err != nil {
			return nil, nil, fmt.Errorf("daemon.json: %s: %w", f.key, err)
		}
	}
	if len(fields) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("}\n")
	return b.Bytes(), dropped, nil
}

// sameMirror compares mirror URLs as dockerd normalizes them (a trailing
// slash is added).
func sameMirror(a, b string) bool {
	return strings.TrimRight(a, "/") == strings.TrimRight(b, "/")
}

// WriteDaemonJSON merges d into the daemon.json at path (see
// MergeDaemonJSON), creating it if needed. A file whose registry mirrors
// would be replaced is kept unless opts.Force; any existing file that
// changes is first saved as path.bak (or a timestamped .bak). dropped are
// the mirrors replaced, or that Force would replace.
func WriteDaemonJSON(path string, d DaemonJSON, opts WriteOptions) (res Result, dropped []string, err error) {
	res.Path = path
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, nil, fmt.Errorf("read %s: %w", path, err)
	}
	exists := err == nil
	merged, dropped, err := MergeDaemonJSON(old, d)
	if err != nil {
		return res, nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case !exists:
		res.Action = nodefile.Created
	case bytes.Equal(old, merged):
		res.Action = nodefile.Unchanged
		return res, dropped, nil
	case len(dropped) > 0 && !opts.Force:
		res.Action = nodefile.Kept
		return res, dropped, nil
	case len(dropped) > 0:
		res.Action = nodefile.Replaced
	default:
		res.Action = nodefile.Updated
	}
	if exists {
		now := opts.Now
		if now == nil {
			now = time.Now
		}
		if res.Backup, err = nodefile.Backup(path, old, now(), false); err != nil {
			return res, dropped, err
		}
	}
	perm := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		perm = st.Mode().Perm()
	} else if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return res, dropped, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	return res, dropped, nodefile.WriteAtomic(path, merged, perm)
}
