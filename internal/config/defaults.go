package config

import (
	"path"
	"path/filepath"
	"strings"
)

// applyDefaults fills every field left empty. It runs after the file,
// environment and flags are merged, so derived values (an upstream's storage
// under DataDir) follow the final DataDir rather than the built-in one.
//
// A zero duration counts as unset here. Load rejects an explicit
// `timeout: 0s` before calling this, since it cannot be told apart afterwards.
func (c *Config) applyDefaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultDrain
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Recycle.Interval == 0 {
		c.Recycle.Interval = DefaultRecycle
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	if c.Warm.Concurrency == 0 {
		c.Warm.Concurrency = DefaultWarmConcurrency
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Timeout == 0 {
			u.Timeout = DefaultTimeout
		}
		if u.FillTimeout == 0 {
			u.FillTimeout = DefaultFillTimeout
		}
		// An upstream's own certificate wins over the top-level one.
		if !u.TLS.Enabled() && u.TLS.KeyFile == "" {
			u.TLS = c.TLS
		}
		// An upstream's own min_free wins over the top-level one.
		if u.Disk.MinFree.IsZero() {
			u.Disk.MinFree = c.Disk.MinFree
		}
		// An empty name would make the storage DataDir itself, shared with
		// every other upstream; leave it empty so Validate reports the name.
		if u.Storage.Path == "" && u.Name != "" {
			u.Storage.Path = filepath.Join(c.DataDir, u.Name)
		}
		c.inheritStorage(u)
	}
	if c.Coordination.Enabled() {
		if c.Coordination.LeaseTTL == 0 {
			c.Coordination.LeaseTTL = DefaultLeaseTTL
		}
		if c.Coordination.PeerListen == "" {
			c.Coordination.PeerListen = DefaultPeerListen
		}
	}
}

// inheritStorage gives an upstream the top-level bucket and local tier
// unless it has its own. Each upstream gets its own key prefix and
// directory under the shared ones: two upstreams in one prefix would
// collect each other's content.
func (c *Config) inheritStorage(u *Upstream) {
	if !u.Storage.S3.Enabled() && c.Storage.S3.Enabled() {
		u.Storage.S3 = c.Storage.S3
		u.Storage.S3.Root = path.Join("/", c.Storage.S3.Root, u.Name)
	}
	if u.Storage.LocalCache.Dir == "" && c.Storage.LocalCache.Dir != "" && u.Name != "" {
		u.Storage.LocalCache.Dir = filepath.Join(c.Storage.LocalCache.Dir, u.Name)
	}
	if u.Storage.LocalCache.MaxSize == 0 {
		u.Storage.LocalCache.MaxSize = c.Storage.LocalCache.MaxSize
	}
	if u.Storage.S3.Enabled() {
		if u.Storage.S3.Region == "" {
			// S3-compatible servers accept any region; AWS needs one.
			u.Storage.S3.Region = "us-east-1"
		}
		if u.Storage.LocalCache.Dir == "" {
			u.Storage.LocalCache.Dir = u.Storage.Path
		}
	}
}

// defaultUpstream is what an upstream entry from a config file starts from
// before its keys are decoded over it.
func defaultUpstream() Upstream {
	return Upstream{Timeout: DefaultTimeout, FillTimeout: DefaultFillTimeout}
}

// Upstream returns the upstream with the given name. Registry host names are
// case-insensitive, so the match is too.
func (c Config) Upstream(name string) (Upstream, bool) {
	for _, u := range c.Upstreams {
		if strings.EqualFold(u.Name, name) {
			return u, true
		}
	}
	return Upstream{}, false
}
