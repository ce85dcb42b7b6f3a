package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Kinds of content, as used in metrics labels.
const (
	KindManifest = "manifest"
	KindBlob     = "blob"
	KindTag      = "tag"
	// KindReferrers is a referrers index, as labelled on bad content.
	KindReferrers = "referrers"
)

// Observer is told about the cache's decisions, for metrics
// (metrics.Upstream implements it). Implementations must be cheap and safe
// for concurrent use.
type Observer interface {
	Hit(kind string)
	Miss(kind string)
	Stale(cause string)
	DedupJoin(kind string)
	UpstreamBytes(n int64)
	// FillUncached reports a blob streamed to its clients without being
	// stored, and why (UncachedNoSpace, UncachedStorageError).
	FillUncached(reason string)
	// StorageError reports a failed write to the store (OpSpool, OpCommit,
	// OpManifest).
	StorageError(op string)
	// FillUncoordinated reports a fill from the upstream that did not
	// hold the cluster's lease (Redis down, or its holder silent): other
	// replicas may fetch the same blob.
	FillUncoordinated()
	// FillTakeover reports the fill lease of a holder whose peer port
	// refused (its process gone) revoked by this replica, so that the
	// cluster fetches the rest of the blob at once instead of after the
	// lease's TTL.
	FillTakeover()
	// FillSource reports where a blob fill reads from: SourceUpstream,
	// SourceBucket or SourcePeer (another replica's running fill).
	FillSource(source string)
	// BadContent reports an upstream answer that was not valid for its
	// endpoint (a digest mismatch, a manifest distribution refuses, a tag
	// list that is none), by kind (KindManifest, KindBlob, KindTag,
	// KindReferrers): the upstream's failing, never the store's.
	BadContent(kind string)
}

// Why a fill was not stored, as labelled in metrics.
const (
	UncachedNoSpace      = "no_space"
	UncachedStorageError = "storage_error"
)

// Store operations that can fail, as labelled in metrics.
const (
	OpSpool    = "spool"
	OpCommit   = "commit"
	OpManifest = "manifest"
)

// Health is told what the cache learns about its upstream's health beyond
// the statuses of its answers, which the upstream client reports: a stale
// serve, and content not valid for its endpoint (health.Upstream
// implements it).
type Health interface {
	Stale(cause string)
	BadContent(kind string)
}

// nopObserver is the Observer of a cache nobody watches (Options.Observer
// unset).
type nopObserver struct{}

func (nopObserver) Hit(string)          {}
func (nopObserver) Miss(string)         {}
func (nopObserver) Stale(string)        {}
func (nopObserver) DedupJoin(string)    {}
func (nopObserver) UpstreamBytes(int64) {}
func (nopObserver) FillUncached(string) {}
func (nopObserver) StorageError(string) {}
func (nopObserver) FillUncoordinated()  {}
func (nopObserver) FillTakeover()       {}
func (nopObserver) FillSource(string)   {}
func (nopObserver) BadContent(string)   {}

// Guard is told about content the cache is about to rely on, before it
// writes or serves it, so that a concurrent garbage collection spares it.
type Guard interface {
	// Use claims digests the cache relies on.
	Use(ds ...digest.Digest)
	// Hold brackets work that relies on the store (a write, or serving a
	// manifest), so that a collection starting meanwhile waits for it to
	// finish before it scans. It must not wait for a collection to end:
	// holds nest.
	Hold() (release func())
}

type nopGuard struct{}

func (nopGuard) Use(...digest.Digest) {}
func (nopGuard) Hold() func()         { return func() {} }

// Options configures a Cache.
type Options struct {
	// Root is the upstream's storage root (filesystem driver root directory).
	Root         string
	Upstream     *upstream.Client
	TagFreshness time.Duration
	TagRules     []TagRule // tags' own freshness, first match first
	Pins         []string  // the config's pinned refs (AddPin adds more)
	FillTimeout  time.Duration
	Logger       *slog.Logger
	Observer     Observer
	// Health, if set, is told of stale serves and bad content.
	Health Health
	Guard  Guard
	// Space accounts for the free space of the store's filesystem; nil
	// turns accounting off.
	Space *disk.Space
	// MinFree is the low watermark a fill must leave free.
	MinFree disk.MinFree
	// MakeRoom, if set, evicts from this upstream's store until at least
	// n more bytes are free, least recently pulled first. On a shared
	// bucket the local copies are evicted instead.
	MakeRoom func(ctx context.Context, n int64) error
	// Driver is the store; nil opens the filesystem under Root.
	Driver storagedriver.StorageDriver
	// Shared, set with a bucket Driver, keeps local copies under its
	// TierDir (the spool too) and coordinates fills with other replicas.
	Shared *Shared
	// RecordPull, if set, is told of each recorded pull of a manifest,
	// besides the revision link's mtime: the cluster's last-pull times.
	RecordPull func(repo string, d digest.Digest, t time.Time)
	// Recreated, if set, is called when the cache recreates the store's
	// directories, deleted under it, and before it writes a manifest,
	// before it writes there: whatever belongs to the store (its lock)
	// must be there too. It must be cheap when nothing changed.
	Recreated func()
}

// Cache is the pull-through logic of one upstream over its local store.
type Cache struct {
	up       atomic.Pointer[upstream.Client]
	tun      atomic.Pointer[tunables]
	driver   storagedriver.StorageDriver
	registry distribution.Namespace
	spoolDir string
	log      *slog.Logger
	obs      Observer
	health   Health // nil: nobody tracks the upstream's health
	guard    Guard
	root     string
	space    *disk.Space
	makeRoom func(ctx context.Context, n int64) error
	shared   *sharedState // nil on the filesystem
	record   func(repo string, d digest.Digest, t time.Time)
	remade   func() // Options.Recreated

	// ctx is the parent of every fill: fills belong to the cache, not to
	// the request, App or config generation that started them, and end
	// only when the cache is closed (its upstream removed).
	ctx    context.Context
	cancel context.CancelFunc

	problem atomic.Pointer[storageProblem] // nil while the store can be written

	manifests singleflight.Group
	heads     singleflight.Group // tag revalidations in flight, by "repo:tag"

	mu     sync.Mutex
	fills  map[digest.Digest]*fill
	closed bool // under mu: no fill starts after Close
	// fillWG counts every goroutine the cache starts that may write to
	// the store (fills, with the links they make for joined clients, and
	// evictions started for them), for Close to wait on. Each Add is made
	// under mu while not closed, or by one of those goroutines. Writes a
	// request makes itself (a manifest, a link) are its server's to drain.
	fillWG sync.WaitGroup
	// landed counts fills whose bytes were moved into the store (or the
	// local copies): a request that looked at the store before a fill
	// landed looks again rather than start a second download (Blob).
	landed atomic.Uint64

	freshMu sync.Mutex
	fresh   map[string]time.Time // "repo:tag" -> last successful revalidation

	accessMu sync.Mutex
	accessed map[string]time.Time // "repo@digest" -> last recorded pull

	pins pinState
}

// tunables are the settings a reload may change under running fills.
type tunables struct {
	tagFreshness time.Duration
	tagRules     []TagRule
	pins         []string
	fillTimeout  time.Duration
	minFree      disk.MinFree
}

// New opens the store under o.Root. Leftover spool files from a previous
// process are removed: they were never part of the cache. A cache is opened
// once per storage root for the life of the process (a reload hands the same
// cache to the upstream's new server), so no running fill's spool is ever
// removed under it.
func New(ctx context.Context, o Options) (*Cache, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Guard == nil {
		o.Guard = nopGuard{}
	}
	if err := os.MkdirAll(o.Root, 0o750); err != nil {
		return nil, fmt.Errorf("create storage root: %w", err)
	}
	driver := o.Driver
	if driver == nil {
		driver = filesystem.New(filesystem.DriverParameters{
			RootDirectory: o.Root,
			MaxThreads:    100,
		})
	}
	var shared *sharedState
	spool := filepath.Join(o.Root, "_spool")
	if o.Shared != nil {
		t, err := openTier(o.Shared.TierDir, o.Shared.TierMax)
		if err != nil {
			return nil, err
		}
		shared = &sharedState{Shared: *o.Shared, tier: t}
		if shared.Peers == nil {
			timeout := o.Upstream.Timeout()
			dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
			shared.Peers = &http.Client{
				// The address comes from Redis: a redirect would take the
				// request, and its token, wherever the answer says.
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
				Transport: &http.Transport{
					DialContext: dialer.DialContext,
					// A peer answers once its own upstream has, within
					// one timeout of taking the lease; one that has not
					// by then is hung or black-holed, and this replica
					// fetches alone rather than wait longer (findSource).
					// The rare cost: a peer slowed by eviction for its
					// fill (also bounded by the timeout) is fetched
					// around once.
					ResponseHeaderTimeout: timeout,
					MaxIdleConnsPerHost:   16,
					IdleConnTimeout:       time.Minute,
					// Blobs are compressed already; a peer's bytes are hashed
					// as they come, as an upstream's are.
					DisableCompression: true,
				}}
		}
		// Beside the copies, so that committing one is a rename.
		spool = filepath.Join(o.Shared.TierDir, "_spool")
		if o.MakeRoom == nil {
			o.MakeRoom = func(_ context.Context, n int64) error {
				if t.evict(n, "") < n {
					return errors.New("local cache emptied, still short of space")
				}
				return nil
			}
		}
	}
	registry, err := storage.NewRegistry(ctx, driver,
		storage.DisableDigestResumption,
		storage.EnableDelete,
	)
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", o.Root, err)
	}
	if err := os.RemoveAll(spool); err != nil {
		return nil, fmt.Errorf("clear spool: %w", err)
	}
	if err := os.MkdirAll(spool, 0o750); err != nil {
		return nil, fmt.Errorf("create spool: %w", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c := &Cache{
		driver:   driver,
		registry: registry,
		spoolDir: spool,
		log:      o.Logger,
		obs:      o.Observer,
		health:   o.Health,
		guard:    o.Guard,
		root:     o.Root,
		space:    o.Space,
		makeRoom: o.MakeRoom,
		shared:   shared,
		record:   o.RecordPull,
		remade:   o.Recreated,
		ctx:      bg,
		cancel:   cancel,
		fills:    map[digest.Digest]*fill{},
		fresh:    map[string]time.Time{},
		accessed: map[string]time.Time{},
	}
	c.Update(o)
	return c, nil
}

// Update applies a reloaded upstream's settings: its new upstream client,
// tag freshness, fill timeout and watermark. Fills already running keep the
// client they started with and finish.
func (c *Cache) Update(o Options) {
	c.up.Store(o.Upstream)
	c.tun.Store(&tunables{tagFreshness: o.TagFreshness, tagRules: o.TagRules, pins: o.Pins, fillTimeout: o.FillTimeout, minFree: o.MinFree})
}

func (c *Cache) client() *upstream.Client { return c.up.Load() }
func (c *Cache) tunables() *tunables      { return c.tun.Load() }

// Close cancels every running fill (the upstream was removed, or the
// process stops: nobody will read what they would bring) and waits for
// them to end, so no goroutine of the cache writes to the store
// afterwards.
func (c *Cache) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.fillWG.Wait()
}

// Space is the free-space accountant of the store's filesystem, or nil.
func (c *Cache) Space() *disk.Space { return c.space }

// upstreamFailed reports an upstream answer that was not valid for its
// endpoint; other failures are the upstream client's to report, as it sees
// their statuses.
func (c *Cache) upstreamFailed(kind string, err error) {
	if upstream.CauseOf(err) != upstream.CauseBadContent {
		return
	}
	c.badContent(kind)
	c.log.Warn("upstream sent bad content", "kind", kind, "err", err)
}

// badContent counts an upstream answer not valid for its endpoint against
// the upstream, in metrics and in its health.
func (c *Cache) badContent(kind string) {
	c.obs.BadContent(kind)
	if c.health != nil {
		c.health.BadContent(kind)
	}
}

// staleServed reports an answer served stale because the upstream failed
// with cause, in metrics and in the upstream's health.
func (c *Cache) staleServed(cause upstream.Cause) {
	c.obs.Stale(string(cause))
	if c.health != nil {
		c.health.Stale(string(cause))
	}
}

// Hold brackets work that relies on the store, such as serving a manifest,
// so that a collection starting meanwhile waits for it (see Guard).
func (c *Cache) Hold() (release func()) { return c.guard.Hold() }

// Root is the storage root directory.
func (c *Cache) Root() string { return c.root }

// Driver is the storage driver the cache writes through.
func (c *Cache) Driver() storagedriver.StorageDriver { return c.driver }

// Namespace is a plain (non-proxy) view of the same storage.
func (c *Cache) Namespace() distribution.Namespace { return c.registry }

func (c *Cache) repo(ctx context.Context, name string) (distribution.Repository, error) {
	named, err := reference.WithName(name)
	if err != nil {
		return nil, &RequestError{Code: "NAME_INVALID", Err: err}
	}
	return c.registry.Repository(ctx, named)
}

// RequestError is a client mistake (bad name or reference): a 4xx, never a 5xx.
type RequestError struct {
	Code string
	Err  error
}

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }
