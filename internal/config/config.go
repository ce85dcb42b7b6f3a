// Package config holds multiproxy's configuration: the types, their defaults,
// loading through viper (file, MULTIPROXY_* environment, flags) and validation
// that names the offending field.
//
// Secrets never live in the config file itself: an upstream's password is read
// from password_file or password_env at load time, kept in a Secret (which
// redacts itself when printed or logged), and never written back out.
package config

import (
	"log/slog"
	"reflect"
	"time"
)

// Defaults used when a field is left empty.
const (
	DefaultDataDir     = "./data"
	DefaultAdminListen = "127.0.0.1:9090"
	DefaultTimeout     = 3 * time.Second
	DefaultFillTimeout = 30 * time.Minute
	DefaultDrain       = 30 * time.Second
	DefaultRecycle     = time.Hour
	DefaultLeaseTTL    = 10 * time.Second
	DefaultPeerListen  = ":5098"
	// DefaultWarmMinRemaining leaves a rollout ten Docker Hub pulls.
	DefaultWarmMinRemaining = 10
	DefaultWarmConcurrency  = 4
)

// DefaultWarmPlatform is what a warm fills of an index when neither the
// request nor warm.platforms names a platform.
const DefaultWarmPlatform = "linux/amd64"

// Config is the whole effective configuration of one multiproxy process.
type Config struct {
	// DataDir is the storage root; each upstream stores under DataDir/<name>
	// unless it sets its own Storage.
	DataDir string `mapstructure:"data_dir" yaml:"data_dir"`
	// ShutdownTimeout bounds how long in-flight requests may drain on SIGTERM.
	ShutdownTimeout time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`
	// LogLevel is one of debug, info, warn, error.
	LogLevel string `mapstructure:"log_level" yaml:"log_level"`
	// ListenAll, if set, is one address serving every upstream, routed by
	// containerd's ?ns= parameter or a /v2/<registry>/ path prefix. An
	// upstream's own listen then becomes optional.
	ListenAll string `mapstructure:"listen_all" yaml:"listen_all,omitempty"`
	Admin     Admin  `mapstructure:"admin" yaml:"admin"`
	// TLS, when set, makes every client-facing listener (each upstream's
	// and listen_all) serve HTTPS with this certificate, unless an upstream
	// sets its own.
	TLS     TLS     `mapstructure:"tls" yaml:"tls,omitempty"`
	Recycle Recycle `mapstructure:"recycle" yaml:"recycle"`
	Disk    Disk    `mapstructure:"disk" yaml:"disk"`
	// Storage holds what every upstream stores on besides data_dir: a
	// shared S3-compatible bucket and the local tier in front of it.
	Storage Storage `mapstructure:"storage" yaml:"storage,omitempty"`
	// Coordination lets replicas sharing one bucket fetch each blob once
	// and collect one at a time.
	Coordination Coordination `mapstructure:"coordination" yaml:"coordination,omitempty"`
	// Warm fills the cache ahead of a rollout: the settings of
	// POST /api/v1/warm and the lists warmed on a schedule.
	Warm      Warm       `mapstructure:"warm" yaml:"warm"`
	Upstreams []Upstream `mapstructure:"upstreams" yaml:"upstreams"`
}

// Warm configures cache warming (`multiproxy warm`, POST /api/v1/warm).
type Warm struct {
	// Platforms are the manifests of an index that a warm fills, as
	// os/arch[/variant], when a request names none. Empty: linux/amd64.
	Platforms []string `mapstructure:"platforms" yaml:"platforms,omitempty"`
	// MinRemaining stops warming an upstream once its last
	// ratelimit-remaining header is below it, so that a warm never spends
	// the pulls a rollout needs. 0: no floor.
	MinRemaining int `mapstructure:"min_remaining" yaml:"min_remaining"`
	// Concurrency is how many images one warm fills at a time.
	Concurrency int `mapstructure:"concurrency" yaml:"concurrency"`
	// Lists are files of image references, or Kubernetes manifests,
	// warmed again on a schedule.
	Lists []WarmList `mapstructure:"lists" yaml:"lists,omitempty"`
}

// WarmList is a file warmed on a cron schedule: image references one a
// line (# starts a comment), or Kubernetes manifests (YAML or JSON) whose
// pod specs' images are warmed; the content tells which.
type WarmList struct {
	From string `mapstructure:"from" yaml:"from"`
	// Schedule is a standard 5-field cron expression.
	Schedule string `mapstructure:"schedule" yaml:"schedule"`
}

// Storage is the top-level storage section: settings every upstream
// inherits unless it sets its own.
type Storage struct {
	S3         S3         `mapstructure:"s3" yaml:"s3,omitempty"`
	LocalCache LocalCache `mapstructure:"local_cache" yaml:"local_cache,omitempty"`
}

// UpstreamStorage is where one upstream keeps its content. A config file
// may write it as a plain path (the directory), as before S3 existed, or
// as a section. After Load it holds the effective values: S3 and
// LocalCache inherited from the top level, with per-upstream roots.
type UpstreamStorage struct {
	// Path is the upstream's own directory: the whole store on the
	// filesystem; with S3, the spool of running fills and the lock.
	Path       string     `mapstructure:"path" yaml:"path,omitempty"`
	S3         S3         `mapstructure:"s3" yaml:"s3,omitempty"`
	LocalCache LocalCache `mapstructure:"local_cache" yaml:"local_cache,omitempty"`
}

// MarshalYAML prints a storage that is only a path as the plain path, the
// way config files write it.
func (s UpstreamStorage) MarshalYAML() (any, error) {
	if !s.S3.Enabled() && s.LocalCache == (LocalCache{}) {
		return s.Path, nil
	}
	type plain UpstreamStorage
	return plain(s), nil
}

// S3 is an S3-compatible bucket that distribution's s3-aws driver stores
// the upstream's content in, shared by every replica.
type S3 struct {
	// Endpoint is the S3 API's base URL; empty means AWS itself.
	Endpoint string `mapstructure:"endpoint" yaml:"endpoint,omitempty"`
	Region   string `mapstructure:"region" yaml:"region,omitempty"`
	Bucket   string `mapstructure:"bucket" yaml:"bucket,omitempty"`
	// Root is the key prefix; at the top level each upstream stores under
	// <root>/<name>.
	Root          string `mapstructure:"root" yaml:"root,omitempty"`
	AccessKeyFile string `mapstructure:"access_key_file" yaml:"access_key_file,omitempty"`
	SecretKeyFile string `mapstructure:"secret_key_file" yaml:"secret_key_file,omitempty"`
	// AccessKey and SecretKey are loaded from their files; without files
	// the AWS SDK's default chain (environment, instance role) applies.
	AccessKey      Secret `mapstructure:"-" yaml:"access_key,omitempty"`
	SecretKey      Secret `mapstructure:"-" yaml:"secret_key,omitempty"`
	ForcePathStyle bool   `mapstructure:"force_path_style" yaml:"force_path_style,omitempty"`
	// Redirect answers GETs of stored blobs with a presigned 307 to the
	// bucket, so the bytes bypass the replica.
	Redirect bool `mapstructure:"redirect" yaml:"redirect,omitempty"`
}

// Enabled reports whether content is stored in a bucket.
func (s S3) Enabled() bool { return s.Bucket != "" }

// LocalCache is the bounded local copy of blobs a replica on S3 keeps, so
// warm blobs go out by sendfile.
type LocalCache struct {
	// Dir holds the copies; at the top level each upstream uses
	// <dir>/<name>. Default: the upstream's storage path.
	Dir string `mapstructure:"dir" yaml:"dir,omitempty"`
	// MaxSize bounds the copies, least recently served evicted first.
	// 0: bounded only by the disk's min_free.
	MaxSize ByteSize `mapstructure:"max_size" yaml:"max_size,omitempty"`
}

// Coordination is how replicas sharing a bucket agree on who fetches a
// blob and who collects garbage.
type Coordination struct {
	Redis Redis `mapstructure:"redis" yaml:"redis,omitempty"`
	// PeerListen serves this replica's running fills to the others.
	PeerListen string `mapstructure:"peer_listen" yaml:"peer_listen,omitempty"`
	// Advertise is the host:port other replicas reach PeerListen at.
	// Default: the address this host reaches Redis from, with
	// peer_listen's port.
	Advertise string `mapstructure:"advertise" yaml:"advertise,omitempty"`
	// LeaseTTL is how long a fill or collection lease outlives a replica
	// that stopped renewing it: the wait before another takes over from a
	// frozen or lost replica. A fill holder whose peer port refuses (its
	// process is gone) is taken over at once instead.
	LeaseTTL time.Duration `mapstructure:"lease_ttl" yaml:"lease_ttl,omitempty"`
	// PeerTokenFile holds a bearer token every peer request carries and
	// peer_listen requires: without it, anything that reaches the peer
	// port can read every blob a replica holds or is fetching.
	PeerTokenFile string `mapstructure:"peer_token_file" yaml:"peer_token_file,omitempty"`
	// PeerToken is loaded from PeerTokenFile.
	PeerToken Secret `mapstructure:"-" yaml:"peer_token,omitempty"`
}

// Enabled reports whether replicas coordinate.
func (c Coordination) Enabled() bool { return c.Redis.Addr != "" || c.Redis.Sentinel.Enabled() }

// IsZero reports whether the section is absent.
func (c Coordination) IsZero() bool { return reflect.ValueOf(c).IsZero() }

// Redis is the Redis server replicas coordinate through: one address, or
// the master a group of Sentinels names.
type Redis struct {
	Addr         string `mapstructure:"addr" yaml:"addr,omitempty"`
	PasswordFile string `mapstructure:"password_file" yaml:"password_file,omitempty"`
	// Password is loaded from PasswordFile.
	Password Secret `mapstructure:"-" yaml:"password,omitempty"`
	DB       int    `mapstructure:"db" yaml:"db,omitempty"`
	// Sentinel, instead of Addr, finds the master through Redis Sentinel,
	// so that coordination follows a failover without a restart.
	Sentinel Sentinel `mapstructure:"sentinel" yaml:"sentinel,omitempty"`
}

// Sentinel is a group of Redis Sentinels watching the coordination master.
type Sentinel struct {
	// Master is the name the Sentinels monitor the master under.
	Master string `mapstructure:"master" yaml:"master,omitempty"`
	// Addrs are the Sentinels' host:port; any one that answers will do.
	Addrs []string `mapstructure:"addrs" yaml:"addrs,omitempty"`
	// PasswordFile holds the Sentinels' own password (requirepass in
	// sentinel.conf), which may differ from the master's.
	PasswordFile string `mapstructure:"password_file" yaml:"password_file,omitempty"`
	// Password is loaded from PasswordFile.
	Password Secret `mapstructure:"-" yaml:"password,omitempty"`
}

// Enabled reports whether the master is found through Sentinels.
func (s Sentinel) Enabled() bool { return s.Master != "" || len(s.Addrs) > 0 }

// Recycle configures how each upstream's embedded App is rebuilt and swapped
// to keep memory flat without a restart.
type Recycle struct {
	// Interval between recycles of one upstream; upstreams are staggered
	// across it so that no two recycle together.
	Interval time.Duration `mapstructure:"interval" yaml:"interval"`
	// MaxMemory recycles upstreams early when the process's Go heap in use
	// exceeds it. 0 disables the memory trigger.
	MaxMemory ByteSize `mapstructure:"max_memory" yaml:"max_memory"`
}

// GC configures an upstream's garbage collection and eviction.
type GC struct {
	// Schedule is a standard 5-field cron expression. Empty: multiproxy
	// picks a weekly slot, staggered so that no two upstreams collect at
	// the same time.
	Schedule string `mapstructure:"schedule" yaml:"schedule,omitempty"`
}

// ByteSize is a size in bytes. Config files may write it as a number or with
// a unit: "512MiB", "20GB".
type ByteSize int64

// TLS is a certificate and key for HTTPS listeners, as PEM files. Both are
// read again on SIGHUP, so a renewed certificate needs no restart.
type TLS struct {
	CertFile string `mapstructure:"cert_file" yaml:"cert_file,omitempty"`
	KeyFile  string `mapstructure:"key_file" yaml:"key_file,omitempty"`
}

// Enabled reports whether a certificate is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// Admin configures the admin listener (metrics, health, admin API).
type Admin struct {
	Listen string `mapstructure:"listen" yaml:"listen"`
	// TokenFile holds the bearer token that mutating admin endpoints require.
	TokenFile string `mapstructure:"token_file" yaml:"token_file,omitempty"`
	// Token is loaded from TokenFile; never read from the config itself.
	Token Secret `mapstructure:"-" yaml:"token,omitempty"`
}

// Upstream is one proxied registry, served on its own listener.
type Upstream struct {
	// Name is the registry host as clients write it in image references
	// (docker.io, ghcr.io, ...). It names the storage directory and labels metrics.
	Name string `mapstructure:"name" yaml:"name"`
	// Listen is the address clients pull from, e.g. ":5000".
	Listen string `mapstructure:"listen" yaml:"listen"`
	// Remote is the upstream registry's base URL, e.g. https://registry-1.docker.io.
	Remote string `mapstructure:"remote" yaml:"remote"`
	// Storage overrides DataDir/<name> (its path) and the top-level
	// storage section. Never shared between upstreams.
	Storage UpstreamStorage `mapstructure:"storage" yaml:"storage"`

	Username     string `mapstructure:"username" yaml:"username,omitempty"`
	PasswordFile string `mapstructure:"password_file" yaml:"password_file,omitempty"`
	PasswordEnv  string `mapstructure:"password_env" yaml:"password_env,omitempty"`
	// Password is loaded from PasswordFile or PasswordEnv.
	Password Secret `mapstructure:"-" yaml:"password,omitempty"`

	// CAFile is a PEM bundle trusted for a private upstream, added to the
	// system roots.
	CAFile string `mapstructure:"ca_file" yaml:"ca_file,omitempty"`
	// Timeout bounds every wait on the upstream: dial, TLS, response headers,
	// and any pause between body reads.
	Timeout time.Duration `mapstructure:"timeout" yaml:"timeout"`
	// FillTimeout bounds one whole cache fill (a blob download) that goes on
	// after the client that started it went away.
	FillTimeout time.Duration `mapstructure:"fill_timeout" yaml:"fill_timeout"`
	// TagFreshness is how long a revalidated tag is served without asking the
	// upstream again. 0 means every tag resolve revalidates.
	TagFreshness time.Duration `mapstructure:"tag_freshness" yaml:"tag_freshness"`
	// TagRules give matching tags their own freshness; the first match
	// wins and tag_freshness covers the rest (see TagRule).
	TagRules []TagRule `mapstructure:"tag_rules" yaml:"tag_rules,omitempty"`
	// Pins are images (repo:tag or repo@digest) that eviction and GC never
	// remove, besides those pinned at run time through the admin API.
	Pins []string `mapstructure:"pins" yaml:"pins,omitempty"`
	// Aliases are further registry hosts this upstream answers for, as they
	// appear in containerd's ?ns= parameter. The name, the remote's host and,
	// for Docker Hub, its well-known names always count.
	Aliases []string `mapstructure:"aliases" yaml:"aliases,omitempty"`
	// AllowHops, when set, lists the only networks (CIDR, or a bare
	// address) that this upstream's redirect targets and token realms may
	// be dialed at. Without it a hop may reach public unicast addresses and
	// the address class of the remote itself (a private registry's private
	// storage). Link-local, unspecified and multicast addresses are
	// refused either way. The remote is the operator's and always dialed.
	AllowHops []string `mapstructure:"allow_hops" yaml:"allow_hops,omitempty"`

	// TLS overrides the top-level tls for this upstream's own listener.
	TLS TLS `mapstructure:"tls" yaml:"tls,omitempty"`

	GC GC `mapstructure:"gc" yaml:"gc"`
	// MaxSize caps the bytes stored for this upstream; GC evicts the least
	// recently pulled images first to stay under it. 0: no cap.
	MaxSize ByteSize `mapstructure:"max_size" yaml:"max_size"`
	// MaxUnused evicts images not pulled for this long. 0: never.
	MaxUnused time.Duration `mapstructure:"max_unused" yaml:"max_unused"`
	// Disk overrides the top-level disk settings for this upstream. After
	// Load it holds the effective values (see MinFree).
	Disk Disk `mapstructure:"disk" yaml:"disk"`
}

// Secret is a credential. It prints as "<redacted>" everywhere: fmt, slog,
// YAML and JSON, so it cannot leak through a log line or `config print`.
type Secret string

const redacted = "<redacted>"

// Reveal returns the secret's value, for the one place that sends it upstream.
func (s Secret) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer, so %#v redacts too.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText implements encoding.TextMarshaler (JSON and YAML use it).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// Default returns the built-in configuration: the five public upstreams the
// seeds run as separate registry:2 containers, on their usual ports.
func Default() Config {
	c := Config{
		DataDir:         DefaultDataDir,
		ShutdownTimeout: DefaultDrain,
		LogLevel:        "info",
		Admin:           Admin{Listen: DefaultAdminListen},
		// Set here rather than in applyDefaults, so that a file's
		// explicit `min_remaining: 0` (no floor) stays 0.
		Warm: Warm{MinRemaining: DefaultWarmMinRemaining, Concurrency: DefaultWarmConcurrency},
		Upstreams: []Upstream{
			{Name: "docker.io", Listen: ":5000", Remote: "https://registry-1.docker.io"},
			{Name: "ghcr.io", Listen: ":5010", Remote: "https://ghcr.io"},
			{Name: "quay.io", Listen: ":5020", Remote: "https://quay.io"},
			{Name: "registry.k8s.io", Listen: ":5030", Remote: "https://registry.k8s.io"},
			{Name: "reg.kyverno.io", Listen: ":5040", Remote: "https://reg.kyverno.io"},
		},
	}
	c.applyDefaults()
	return c
}
