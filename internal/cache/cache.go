package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
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
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	// Manifest schemas register their unmarshalers in init.
	_ "github.com/distribution/distribution/v3/manifest/manifestlist"
	_ "github.com/distribution/distribution/v3/manifest/ocischema"
	_ "github.com/distribution/distribution/v3/manifest/schema2"

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

// Observer is told about the cache's decisions. Implementations must be cheap
// and safe for concurrent use.
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

type nopObserver struct{}

func (nopObserver) Hit(string)          {}
func (nopObserver) Miss(string)         {}
func (nopObserver) Stale(string)        {}
func (nopObserver) DedupJoin(string)    {}
func (nopObserver) UpstreamBytes(int64) {}
func (nopObserver) FillUncached(string) {}
func (nopObserver) StorageError(string) {}
func (nopObserver) FillUncoordinated()  {}
func (nopObserver) FillSource(string)   {}
func (nopObserver) BadContent(string)   {}

// Guard is told about content the cache is about to rely on, before it
// writes or serves it, so that a concurrent garbage collection spares it.
type Guard interface {
	// Use claims digests the cache relies on.
	Use(ds ...digest.Digest)
	// Hold brackets work that relies on the store (a write, or serving a
	// manifest), so that a collection starting meanwhile waits for it to
	// finish before it scans. It must not block: holds nest.
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
	Guard        Guard
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
	// directories, deleted under it, before it writes there: whatever
	// belonged to the store (its lock) must be recreated too.
	Recreated func()
}

// Cache is the pull-through logic of one upstream over its local store.
type Cache struct {
	up       atomic.Pointer[upstream.Client]
	tun      atomic.Pointer[tunables]
	driver   storagedriver.StorageDriver
	ns       distribution.Namespace
	spoolDir string
	log      *slog.Logger
	obs      Observer
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
	closed bool           // under mu: no fill starts after Close
	fillWG sync.WaitGroup // running fills, for Close to wait on

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
	ns, err := storage.NewRegistry(ctx, driver,
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
		ns:       ns,
		spoolDir: spool,
		log:      o.Logger,
		obs:      o.Observer,
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
func (c *Cache) opts() *tunables          { return c.tun.Load() }

// Close cancels every running fill (the upstream was removed, or the
// process stops: nobody will read what they would bring) and waits for
// them to end, so nothing writes to the store afterwards.
func (c *Cache) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.fillWG.Wait()
}

// Space is the free-space accountant of the store's filesystem, or nil.
func (c *Cache) Space() *disk.Space { return c.space }

// storageProblem is a failed write to the store, kept until one succeeds.
type storageProblem struct {
	op    string
	err   error
	since time.Time
}

// StorageProblem says why the store cannot be written now: the operation
// that failed last, since when, and the error (for the log and operators,
// never for clients). It is nil while writes succeed.
func (c *Cache) StorageProblem() (op string, since time.Time, err error) {
	p := c.problem.Load()
	if p == nil {
		return "", time.Time{}, nil
	}
	return p.op, p.since, p.err
}

// storageFailed records a failed write; the first failure of a run of them
// is logged, the rest only counted.
func (c *Cache) storageFailed(op string, err error) {
	c.obs.StorageError(op)
	prev := c.problem.Load()
	since := time.Now()
	if prev != nil {
		since = prev.since
	} else {
		c.log.Error("storage write failed; serving without storing until it works again", "op", op, "err", err)
	}
	c.problem.Store(&storageProblem{op: op, err: err, since: since})
}

// upstreamFailed reports an upstream answer that was not valid for its
// endpoint; other failures are the upstream client's to report, as it sees
// their statuses.
func (c *Cache) upstreamFailed(kind string, err error) {
	if upstream.CauseOf(err) != upstream.CauseBadContent {
		return
	}
	c.obs.BadContent(kind)
	c.log.Warn("upstream sent bad content", "kind", kind, "err", err)
}

// storageWorked clears a recorded storage problem.
func (c *Cache) storageWorked() {
	if c.problem.Swap(nil) != nil {
		c.log.Info("storage writable again")
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
func (c *Cache) Namespace() distribution.Namespace { return c.ns }

func (c *Cache) repo(ctx context.Context, name string) (distribution.Repository, error) {
	named, err := reference.WithName(name)
	if err != nil {
		return nil, &RequestError{Code: "NAME_INVALID", Err: err}
	}
	return c.ns.Repository(ctx, named)
}

// RequestError is a client mistake (bad name or reference): a 4xx, never a 5xx.
type RequestError struct {
	Code string
	Err  error
}

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

// Resolved is the answer to a tag lookup.
type Resolved struct {
	Digest digest.Digest
	// Stale is set when the upstream could not confirm the tag and the cached
	// answer was used instead.
	Stale bool
	Cause upstream.Cause
	Err   error // why the revalidation failed, when Stale
	// Manifest is set when the store could not take the manifest: it is
	// to be served from memory.
	Manifest *Manifest
	// Rule is the glob of the tag rule that set the tag's freshness, or
	// "" for tag_freshness.
	Rule string
}

// resolveTag is ResolveTag with the tag's freshness decided.
func (c *Cache) resolveTag(ctx context.Context, name, tag string, fresh time.Duration) (Resolved, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return Resolved{}, err
	}
	tags := repo.Tags(ctx)
	local, lerr := tags.Get(ctx, tag)
	if lerr == nil {
		// Claim before looking, as for blobs: a collection running now
		// either sees the claim or has already removed the manifest, and
		// then the lookup says so.
		c.guard.Use(local.Digest)
	}
	hasLocal := lerr == nil && c.hasManifest(ctx, repo, local.Digest)
	key := name + ":" + tag

	if hasLocal && fresh > 0 && c.isFresh(key, fresh) {
		c.obs.Hit(KindTag)
		c.used(name, local.Digest)
		return Resolved{Digest: local.Digest}, nil
	}

	stale := func(err error) (Resolved, error) {
		cause := upstream.CauseOf(err)
		c.obs.Stale(string(cause))
		c.used(name, local.Digest)
		c.log.Warn("serving stale tag", "repository", name, "tag", tag, "digest", local.Digest, "cause", cause, "err", err)
		return Resolved{Digest: local.Digest, Stale: true, Cause: cause, Err: err}, nil
	}

	info, err := c.revalidate(ctx, name, tag)
	if err == nil && info.Digest == "" {
		// Some registries omit the digest on HEAD; GET by tag and hash it.
		info, err = c.fetchManifestByTag(ctx, repo, name, tag)
	}
	if err != nil {
		if upstream.IsNotFound(err) {
			if lerr == nil {
				// The tag is gone upstream; a later outage must not bring it back.
				if uerr := tags.Untag(ctx, tag); uerr != nil {
					c.log.Warn("drop deleted tag", "repository", name, "tag", tag, "err", uerr)
				}
			}
			return Resolved{}, err
		}
		if hasLocal {
			return stale(err)
		}
		return Resolved{}, err
	}

	if hasLocal && info.Digest == local.Digest {
		c.obs.Hit(KindTag)
		c.used(name, local.Digest)
		c.markFresh(key, fresh)
		return Resolved{Digest: local.Digest}, nil
	}
	c.obs.Miss(KindTag)
	desc, mem, err := c.ensureManifest(ctx, repo, name, info.Digest)
	if err != nil {
		if hasLocal && !upstream.IsNotFound(err) {
			return stale(err)
		}
		return Resolved{}, err
	}
	if mem != nil {
		return Resolved{Digest: info.Digest, Manifest: mem}, nil
	}
	if err := tags.Tag(ctx, tag, desc); err != nil {
		// The manifest is stored and is what the tag points at now; only
		// remembering the tag failed, which the next pull retries.
		c.storageFailed(OpManifest, fmt.Errorf("tag %s:%s: %w", name, tag, err))
		tagDir := filepath.Join(c.root, "docker", "registry", "v2", "repositories", name, "_manifests", "tags", tag)
		c.removeTemps(filepath.Join(tagDir, "current"),
			filepath.Join(tagDir, "index", info.Digest.Algorithm().String(), info.Digest.Encoded()))
		return Resolved{Digest: info.Digest}, nil
	}
	c.markFresh(key, fresh)
	return Resolved{Digest: info.Digest}, nil
}

// revalidate asks the upstream where a tag points now. Concurrent pulls of
// one tag share one HEAD: a DaemonSet rolling out to 500 nodes sends about
// one, not 500. A pull joins only a HEAD still in flight, so its answer is
// at most one upstream round trip older than the pull: a push is still seen
// by the next pull that starts after the HEAD returns.
func (c *Cache) revalidate(ctx context.Context, name, tag string) (upstream.ManifestInfo, error) {
	ch := c.heads.DoChan(name+":"+tag, func() (any, error) {
		// Detached: the pulls waiting on it share the answer, and the
		// first one leaving must not fail the rest.
		info, err := c.client().HeadManifest(context.WithoutCancel(ctx), name, tag)
		c.upstreamFailed(KindManifest, err)
		return info, err
	})
	select {
	case <-ctx.Done():
		return upstream.ManifestInfo{}, ctx.Err()
	case r := <-ch:
		if r.Shared {
			c.obs.DedupJoin(KindTag)
		}
		info, _ := r.Val.(upstream.ManifestInfo)
		return info, r.Err
	}
}

// fetchManifestByTag is the fallback for upstreams whose HEAD has no digest.
func (c *Cache) fetchManifestByTag(ctx context.Context, repo distribution.Repository, name, tag string) (upstream.ManifestInfo, error) {
	body, info, err := c.client().GetManifest(ctx, name, tag)
	if err != nil {
		c.upstreamFailed(KindManifest, err)
		return info, err
	}
	var ns *notStored
	if _, err := c.putManifest(ctx, repo, body, info); err != nil && !errors.As(err, &ns) {
		c.upstreamFailed(KindManifest, err)
		return info, err
	}
	return info, nil
}

func (c *Cache) isFresh(key string, fresh time.Duration) bool {
	c.freshMu.Lock()
	defer c.freshMu.Unlock()
	t, ok := c.fresh[key]
	return ok && time.Since(t) < fresh
}

func (c *Cache) markFresh(key string, fresh time.Duration) {
	if fresh <= 0 {
		return
	}
	c.freshMu.Lock()
	defer c.freshMu.Unlock()
	c.fresh[key] = time.Now()
}

// ResetFreshness forgets when tags were last revalidated, so the next pull of
// each revalidates. A recycle calls it to drop the map's memory.
func (c *Cache) ResetFreshness() {
	c.freshMu.Lock()
	c.fresh = map[string]time.Time{}
	c.freshMu.Unlock()
}

// Forget drops a cached tag, so the next pull resolves it upstream again.
func (c *Cache) Forget(ctx context.Context, name, tag string) error {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return err
	}
	c.freshMu.Lock()
	delete(c.fresh, name+":"+tag)
	c.freshMu.Unlock()
	err = repo.Tags(ctx).Untag(ctx, tag)
	var unknown distribution.ErrTagUnknown
	if errors.As(err, &unknown) {
		return nil
	}
	return err
}

func (c *Cache) hasManifest(ctx context.Context, repo distribution.Repository, d digest.Digest) bool {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return false
	}
	ok, err := ms.Exists(ctx, d)
	return err == nil && ok
}

// EnsureManifest makes the manifest with digest d present in the local store,
// fetching and verifying it on a miss. Concurrent misses share one GET.
//
// When the store cannot take the manifest it is returned, verified, to be
// served from memory; otherwise the returned Manifest is nil.
func (c *Cache) EnsureManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	c.guard.Use(d) // claim before looking (see ResolveTag)
	if c.hasManifest(ctx, repo, d) {
		c.obs.Hit(KindManifest)
		c.used(name, d)
		return nil, nil
	}
	_, mem, err := c.ensureManifest(ctx, repo, name, d)
	if err == nil && mem == nil {
		c.used(name, d)
	}
	return mem, err
}

func (c *Cache) ensureManifest(ctx context.Context, repo distribution.Repository, name string, d digest.Digest) (v1.Descriptor, *Manifest, error) {
	ch := c.manifests.DoChan(name+"@"+d.String(), func() (any, error) {
		// Detached from any one client: the others waiting share this
		// result. One more timeout for the wait on another replica.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*c.client().Timeout())
		defer cancel()
		if c.hasManifest(fctx, repo, d) {
			return c.describeManifest(fctx, repo, d)
		}
		c.obs.Miss(KindManifest)
		if c.shared != nil && c.shared.Coord != nil {
			stored, lease := c.leaseManifest(fctx, repo, d)
			if stored {
				return c.describeManifest(fctx, repo, d)
			}
			if lease != nil {
				defer lease.Release()
			}
		}
		body, info, err := c.client().GetManifest(fctx, name, d.String())
		if err != nil {
			c.upstreamFailed(KindManifest, err)
			return v1.Descriptor{}, err
		}
		c.obs.UpstreamBytes(int64(len(body)))
		desc, err := c.putManifest(fctx, repo, body, info)
		c.upstreamFailed(KindManifest, err)
		return desc, err
	})
	select {
	case <-ctx.Done():
		return v1.Descriptor{}, nil, ctx.Err()
	case r := <-ch:
		if r.Shared {
			c.obs.DedupJoin(KindManifest)
		}
		desc, _ := r.Val.(v1.Descriptor)
		var ns *notStored
		if errors.As(r.Err, &ns) {
			return desc, &Manifest{Body: ns.body, MediaType: desc.MediaType}, nil
		}
		if r.Err != nil {
			return v1.Descriptor{}, nil, r.Err
		}
		return desc, nil, nil
	}
}

func (c *Cache) describeManifest(ctx context.Context, repo distribution.Repository, d digest.Digest) (v1.Descriptor, error) {
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return v1.Descriptor{}, err
	}
	m, err := ms.Get(ctx, d)
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, payload, err := m.Payload()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(payload))}, nil
}

// putManifest stores verified manifest bytes exactly as the upstream sent
// them. Bytes distribution would refuse are the upstream's bad content,
// found before the write so that they never count as a store that cannot
// write.
func (c *Cache) putManifest(ctx context.Context, repo distribution.Repository, body []byte, info upstream.ManifestInfo) (v1.Descriptor, error) {
	m, desc, err := distribution.UnmarshalManifest(manifestMediaType(info.MediaType, body), body)
	if err != nil {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	if desc.Digest != info.Digest {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent,
			Err: fmt.Errorf("digest mismatch: want %s, got %s", info.Digest, desc.Digest)}
	}
	if err := checkManifest(body); err != nil {
		return v1.Descriptor{}, &upstream.Error{Op: "parse manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	// Before the first write: a collection running now must spare the
	// manifest and everything it references.
	refs := []digest.Digest{desc.Digest}
	for _, r := range m.References() {
		refs = append(refs, r.Digest)
	}
	release := c.guard.Hold()
	defer release()
	c.guard.Use(refs...)
	ms, err := repo.Manifests(ctx, storage.SkipLayerVerification())
	if err != nil {
		return v1.Descriptor{}, err
	}
	c.ensureRoot()
	got, err := ms.Put(ctx, m)
	if err != nil && manifestRefused(err) {
		return v1.Descriptor{}, &upstream.Error{Op: "store manifest", Cause: upstream.CauseBadContent, Err: err}
	}
	if err != nil {
		// The bytes are verified: a store that cannot take them (full,
		// read-only, gone) must not fail the pull. The caller serves them
		// from memory.
		c.storageFailed(OpManifest, fmt.Errorf("store manifest %s: %w", info.Digest, err))
		// distribution's filesystem driver leaves its temporary file
		// behind when the final write fails (a full disk): on a disk that
		// stays full every refused manifest would leave one more.
		c.removeTemps(filepath.Dir(c.blobPath(info.Digest)),
			filepath.Dir(RevisionLinkPath(c.root, repo.Named().Name(), info.Digest)))
		return desc, &notStored{body: body}
	}
	if got != info.Digest {
		return v1.Descriptor{}, fmt.Errorf("store manifest: stored as %s, want %s", got, info.Digest)
	}
	c.storageWorked()
	return desc, nil
}

// ensureRoot recreates the store's root if it was deleted under the process,
// so that the driver, which would recreate it silently, never writes into a
// store whose lock is gone. A manifest may be the first write to a
// recreated store: a pull by tag writes it before any blob is spooled.
func (c *Cache) ensureRoot() {
	if c.shared != nil {
		return
	}
	if _, err := os.Stat(c.root); !errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err := os.MkdirAll(c.root, 0o750); err != nil {
		return // the write that follows fails and says why
	}
	c.log.Warn("recreated the storage directory", "dir", c.root)
	c.storeRecreated()
}

func (c *Cache) storeRecreated() {
	if c.remade != nil {
		c.remade()
	}
}

// removeTemps deletes the driver's leftover temporary files (*.tmp) in dirs.
func (c *Cache) removeTemps(dirs ...string) {
	for _, dir := range dirs {
		tmps, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
		for _, f := range tmps {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				c.log.Debug("remove temporary file", "err", err)
			}
		}
	}
}

// FetchManifest fetches and verifies manifest d from the upstream, stores it
// if the store takes it, and returns its bytes either way: for a client
// whose stored copy was lost between the cache's check and the read.
func (c *Cache) FetchManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	body, info, err := c.client().GetManifest(ctx, name, d.String())
	if err != nil {
		c.upstreamFailed(KindManifest, err)
		return nil, err
	}
	c.obs.UpstreamBytes(int64(len(body)))
	var ns *notStored
	desc, err := c.putManifest(ctx, repo, body, info)
	if err != nil && !errors.As(err, &ns) {
		c.upstreamFailed(KindManifest, err)
		return nil, err
	}
	c.used(name, d)
	// The media type the store serves it as, not the upstream's header:
	// one that is no manifest type was replaced by the manifest's own.
	return &Manifest{Body: body, MediaType: desc.MediaType}, nil
}

// StoredManifest reads manifest d of repository name from the store, with
// the media type the store serves it as. An error means the store does not
// have it (its revision link or blob is gone) or cannot read it; the
// caller decides whether to fetch it again.
func (c *Cache) StoredManifest(ctx context.Context, name string, d digest.Digest) (*Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	m, err := ms.Get(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	mt, body, err := m.Payload()
	if err != nil {
		return nil, fmt.Errorf("read manifest %s@%s: %w", name, d, err)
	}
	return &Manifest{Body: body, MediaType: mt}, nil
}

// notStored carries a verified manifest the store could not take.
type notStored struct{ body []byte }

func (e *notStored) Error() string { return "manifest not stored" }

// Manifest is a verified manifest's bytes and media type: one the store
// could not take (a full or read-only disk), to be served from memory, or
// one read back from the store.
type Manifest struct {
	Body      []byte
	MediaType string
}
