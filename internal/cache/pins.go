package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/manifest/manifestlist"
	"github.com/distribution/distribution/v3/manifest/schema2"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/multiproxy/multiproxy/internal/config"
)

// PinsPath is where the pins added at run time are kept, in the store's
// own driver paths: they live with the content they protect, on the
// filesystem or in a shared bucket, and survive restarts and replicas.
// It is beside the collection marker, outside /docker, which distribution
// walks.
const PinsPath = "/multiproxy/pins.json"

// Pin sources, as listed.
const (
	PinFromConfig = "config"
	PinFromAPI    = "api"
)

// pinnedMaxAge is how long a computed pinned size is reused: a scrape or a
// status page must not walk the pinned manifests each time, and a pull
// that caches more of a pinned image shows within this.
const pinnedMaxAge = 30 * time.Second

// Pin is one pinned image and what it holds in the store now.
type Pin struct {
	Ref    string
	Source string // PinFromConfig or PinFromAPI
	// Digest is the manifest the pin stands for now ("" if not cached).
	Digest digest.Digest
	// Bytes are the cached manifests and blobs reachable from it; content
	// shared with other pins counts for each.
	Bytes int64
}

// ErrPinUnknown is a removal of a ref that is not pinned at run time.
var ErrPinUnknown = errors.New("not pinned")

// ErrPinInConfig is a removal of a pin that the config file makes.
var ErrPinInConfig = errors.New("pinned by the config file (upstreams[].pins): remove it there")

// ErrPinsLock refuses a pin change on a shared bucket when the cluster's
// pins lock cannot be had: changed without it, the pins file could lose
// another replica's change made at the same time.
var ErrPinsLock = errors.New("pins not changed: the cluster's pins lock is unavailable (coordination through Redis)")

// PinLimitError refuses a pin that would make pins hold more than the
// upstream's max_size: eviction could then never get under the cap.
type PinLimitError struct {
	Ref    string
	Pinned int64 // what all pins would hold with Ref
	Limit  int64
}

func (e *PinLimitError) Error() string {
	return fmt.Sprintf("pinning %s would make pins hold %s, over max_size %s: unpin something or raise max_size",
		e.Ref, config.ByteSize(e.Pinned), config.ByteSize(e.Limit))
}

// maxPinsFile bounds the pins file read from the store: tens of
// thousands of pins fit in it.
const maxPinsFile = 1 << 20

// pinFile is the JSON object kept at PinsPath.
type pinFile struct {
	Pins []string `json:"pins"`
}

// ReadPins returns the pins added at run time to the store behind d.
func ReadPins(ctx context.Context, d storagedriver.StorageDriver) ([]string, error) {
	// The bucket is shared and may hold anything: read at most
	// maxPinsFile, so a huge or corrupt object costs an error, not the
	// process's memory.
	r, err := d.Reader(ctx, PinsPath, 0)
	var missing storagedriver.PathNotFoundError
	if errors.As(err, &missing) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pins: %w", err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxPinsFile+1))
	if err != nil {
		return nil, fmt.Errorf("read pins: %w", err)
	}
	if len(b) > maxPinsFile {
		return nil, fmt.Errorf("read pins %s: larger than %d bytes; not a pins file this version wrote", PinsPath, maxPinsFile)
	}
	var f pinFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("read pins %s: %w", PinsPath, err)
	}
	return f.Pins, nil
}

func writePins(ctx context.Context, d storagedriver.StorageDriver, pins []string) error {
	b, err := json.Marshal(pinFile{Pins: pins})
	if err != nil {
		return fmt.Errorf("encode pins: %w", err)
	}
	if err := d.PutContent(ctx, PinsPath, b); err != nil {
		return fmt.Errorf("write pins: %w", err)
	}
	return nil
}

// pinState is the cache's pin bookkeeping.
type pinState struct {
	// mu serialises pin changes (a read-modify-write of PinsPath) and
	// size computations.
	mu     sync.Mutex
	sizeAt time.Time // when size and count were computed
	size   int64
	count  int
	// failedAt is when computing them last failed, with err: a store that
	// cannot be read is asked again only after pinnedMaxAge, so that
	// scrapes and status pages do not each wait on it.
	failedAt time.Time
	err      error
}

// Pins lists every pin, the config's first, with what each holds, and the
// bytes all of them hold together (shared content once).
func (c *Cache) Pins(ctx context.Context) ([]Pin, int64, error) {
	c.pins.mu.Lock()
	defer c.pins.mu.Unlock()
	pins, err := c.allPins(ctx)
	if err != nil {
		return nil, 0, err
	}
	sizes := map[digest.Digest]int64{}
	all := map[digest.Digest]bool{}
	for i := range pins {
		ref, err := config.ParsePin(pins[i].Ref)
		if err != nil {
			continue // a config pin was checked at load; a stored one by AddPin
		}
		root, held, err := c.pinned(ctx, ref, sizes)
		if err != nil {
			return nil, 0, err
		}
		pins[i].Digest = root
		for d := range held {
			pins[i].Bytes += sizes[d]
			all[d] = true
		}
	}
	var total int64
	for d := range all {
		total += sizes[d]
	}
	c.pins.size, c.pins.count, c.pins.sizeAt = total, len(pins), time.Now()
	c.pins.failedAt, c.pins.err = time.Time{}, nil
	return pins, total, nil
}

// PinnedBytes is what all pins hold together, and how many pins there
// are, computed at most every pinnedMaxAge.
func (c *Cache) PinnedBytes(ctx context.Context) (n int64, pins int, err error) {
	c.pins.mu.Lock()
	if !c.pins.sizeAt.IsZero() && time.Since(c.pins.sizeAt) < pinnedMaxAge {
		n, pins = c.pins.size, c.pins.count
		c.pins.mu.Unlock()
		return n, pins, nil
	}
	if !c.pins.failedAt.IsZero() && time.Since(c.pins.failedAt) < pinnedMaxAge {
		err = c.pins.err
		c.pins.mu.Unlock()
		return 0, 0, err
	}
	c.pins.mu.Unlock()
	list, n, err := c.Pins(ctx)
	if err != nil {
		c.pins.mu.Lock()
		c.pins.failedAt, c.pins.err = time.Now(), err
		c.pins.mu.Unlock()
		return 0, 0, err
	}
	return n, len(list), nil
}

// AddPin pins ref (repo:tag or repo@digest within this upstream) and
// returns it as listed. The pin's manifests (an index and every platform's
// manifest) are fetched now, through the same verified path as a pull, so
// that a ref that does not exist is refused at once; its blobs are cached
// by the first pull of each platform, and from then on never evicted:
// fetching every platform's layers of an index would fill the disk with
// platforms no node runs.
//
// With limit > 0, a pin that would make all pins hold more than limit
// bytes of what is cached is refused with a *PinLimitError, and nothing
// changes. Pinning a ref twice is not an error.
func (c *Cache) AddPin(ctx context.Context, raw string, limit int64) (Pin, error) {
	ref, err := config.ParsePin(raw)
	if err != nil {
		return Pin{}, &RequestError{Code: "NAME_INVALID", Err: err}
	}
	if err := c.fetchPinned(ctx, ref); err != nil {
		return Pin{}, err
	}
	if err := c.recordPin(ctx, ref, limit); err != nil {
		return Pin{}, err
	}
	pins, _, err := c.Pins(ctx)
	if err != nil {
		return Pin{}, err
	}
	for _, p := range pins {
		if p.Ref == ref.String() {
			return p, nil
		}
	}
	return Pin{Ref: ref.String(), Source: PinFromAPI}, nil
}

// recordPin adds ref to the stored pins unless it is pinned already, or
// refuses it over limit.
func (c *Cache) recordPin(ctx context.Context, ref config.PinRef, limit int64) error {
	lock, err := c.lockPins(ctx)
	if err != nil {
		return err
	}
	defer lock.release()
	c.pins.mu.Lock()
	defer c.pins.mu.Unlock()
	stored, err := ReadPins(ctx, c.driver)
	if err != nil {
		return err
	}
	if slices.Contains(stored, ref.String()) || slices.Contains(c.tunables().pins, ref.String()) {
		return nil
	}
	if limit > 0 {
		n, err := c.total(ctx, slices.Concat(c.tunables().pins, stored, []string{ref.String()}))
		if err != nil {
			return err
		}
		if n > limit {
			return &PinLimitError{Ref: ref.String(), Pinned: n, Limit: limit}
		}
	}
	if err := lock.valid(); err != nil {
		return err
	}
	if err := writePins(ctx, c.driver, append(stored, ref.String())); err != nil {
		return err
	}
	c.pins.sizeAt, c.pins.failedAt = time.Time{}, time.Time{}
	c.log.Info("pinned", "ref", ref.String())
	return nil
}

// RemovePin unpins a ref pinned at run time. Its content stays cached and
// becomes evictable like any other.
func (c *Cache) RemovePin(ctx context.Context, raw string) error {
	ref, err := config.ParsePin(raw)
	if err != nil {
		return &RequestError{Code: "NAME_INVALID", Err: err}
	}
	if slices.Contains(c.tunables().pins, ref.String()) {
		return ErrPinInConfig
	}
	lock, err := c.lockPins(ctx)
	if err != nil {
		return err
	}
	defer lock.release()
	c.pins.mu.Lock()
	defer c.pins.mu.Unlock()
	stored, err := ReadPins(ctx, c.driver)
	if err != nil {
		return err
	}
	i := slices.Index(stored, ref.String())
	if i < 0 {
		return ErrPinUnknown
	}
	if err := lock.valid(); err != nil {
		return err
	}
	if err := writePins(ctx, c.driver, slices.Delete(stored, i, i+1)); err != nil {
		return err
	}
	c.pins.sizeAt, c.pins.failedAt = time.Time{}, time.Time{}
	c.log.Info("unpinned", "ref", ref.String())
	return nil
}

// pinsLock is the cluster's pins lease while a pin change is made; nil
// when the store is not shared with coordination, where the process's own
// mutex is the whole story.
type pinsLock struct{ l PinsLock }

// lockPins takes the cluster's pins lease, when there is a cluster. It is
// taken before pins.mu: a replica that waits for another's change then
// still lists its pins meanwhile.
func (c *Cache) lockPins(ctx context.Context) (*pinsLock, error) {
	if c.shared == nil || c.shared.Coord == nil {
		return nil, nil
	}
	l, err := c.shared.Coord.LockPins(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPinsLock, err)
	}
	return &pinsLock{l}, nil
}

// valid is checked just before the write: a lease lost meanwhile (Redis
// went away for a TTL, the process was paused) may be another replica's
// now, and its change would be overwritten.
func (p *pinsLock) valid() error {
	if p == nil {
		return nil
	}
	if err := p.l.Valid(); err != nil {
		return fmt.Errorf("%w: %w", ErrPinsLock, err)
	}
	return nil
}

func (p *pinsLock) release() {
	if p != nil {
		p.l.Release()
	}
}

// allPins is every pin, config first, without sizes. Under pins.mu.
func (c *Cache) allPins(ctx context.Context) ([]Pin, error) {
	var out []Pin
	for _, p := range c.tunables().pins {
		out = append(out, Pin{Ref: p, Source: PinFromConfig})
	}
	stored, err := ReadPins(ctx, c.driver)
	if err != nil {
		return nil, err
	}
	for _, p := range stored {
		if !slices.Contains(c.tunables().pins, p) {
			out = append(out, Pin{Ref: p, Source: PinFromAPI})
		}
	}
	return out, nil
}

// PinnedBytesWith is what the store's pins and cfgPins hold together: a
// config's pins, checked against its max_size before it is applied.
func (c *Cache) PinnedBytesWith(ctx context.Context, cfgPins []string) (int64, error) {
	c.pins.mu.Lock()
	defer c.pins.mu.Unlock()
	stored, err := ReadPins(ctx, c.driver)
	if err != nil {
		return 0, err
	}
	return c.total(ctx, slices.Concat(cfgPins, stored))
}

// total is what pins hold together, shared content once. Under pins.mu.
func (c *Cache) total(ctx context.Context, pins []string) (int64, error) {
	sizes := map[digest.Digest]int64{}
	all := map[digest.Digest]bool{}
	for _, raw := range pins {
		ref, err := config.ParsePin(raw)
		if err != nil {
			continue // checked at load, or when added
		}
		_, held, err := c.pinned(ctx, ref, sizes)
		if err != nil {
			return 0, err
		}
		for d := range held {
			all[d] = true
		}
	}
	var n int64
	for d := range all {
		n += sizes[d]
	}
	return n, nil
}

// fetchPinned caches ref's manifest and, for an index, every platform's
// manifest, as pulls of them would.
func (c *Cache) fetchPinned(ctx context.Context, ref config.PinRef) error {
	d := ref.Digest
	if ref.Tag != "" {
		res, err := c.ResolveTag(ctx, ref.Repo, ref.Tag)
		if err != nil {
			return err
		}
		if res.Manifest != nil {
			return fmt.Errorf("pin %s: the store cannot take its manifest", ref)
		}
		d = res.Digest
	} else if mem, err := c.EnsureManifest(ctx, ref.Repo, d); err != nil {
		return err
	} else if mem != nil {
		return fmt.Errorf("pin %s: the store cannot take its manifest", ref)
	}
	m, err := c.storedManifest(ctx, ref.Repo, d)
	if err != nil {
		return fmt.Errorf("pin %s: %w", ref, err)
	}
	for _, child := range m.References() {
		if !isManifestType(child.MediaType) {
			continue
		}
		if mem, err := c.EnsureManifest(ctx, ref.Repo, child.Digest); err != nil {
			return fmt.Errorf("pin %s: platform manifest %s: %w", ref, child.Digest, err)
		} else if mem != nil {
			return fmt.Errorf("pin %s: the store cannot take platform manifest %s", ref, child.Digest)
		}
	}
	return nil
}

// pinned is the manifest ref stands for in the store now ("" if none) and
// every cached digest reachable from it: manifests, configs, layers and,
// for an index, its platforms' (those cached). sizes gets the size of each.
func (c *Cache) pinned(ctx context.Context, ref config.PinRef, sizes map[digest.Digest]int64) (digest.Digest, map[digest.Digest]bool, error) {
	held := map[digest.Digest]bool{}
	repo, err := c.repo(ctx, ref.Repo)
	if err != nil {
		return "", nil, err
	}
	root := ref.Digest
	if ref.Tag != "" {
		desc, err := repo.Tags(ctx).Get(ctx, ref.Tag)
		if err != nil {
			return "", held, nil // not cached (yet): it holds nothing
		}
		root = desc.Digest
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("pinned %s: %w", ref, err)
	}
	stat := func(d digest.Digest) bool {
		if _, ok := sizes[d]; ok {
			return true
		}
		desc, err := c.registry.BlobStatter().Stat(ctx, d)
		if err != nil {
			return false // not cached
		}
		sizes[d] = desc.Size
		return true
	}
	var walk func(d digest.Digest) error
	walk = func(d digest.Digest) error {
		if held[d] {
			return nil
		}
		if ok, err := ms.Exists(ctx, d); err != nil || !ok {
			return nil // not cached: it holds nothing
		}
		m, err := ms.Get(ctx, d)
		if err != nil {
			return nil // lost meanwhile
		}
		if stat(d) {
			held[d] = true
		}
		for _, r := range m.References() {
			if isManifestType(r.MediaType) {
				if err := walk(r.Digest); err != nil {
					return err
				}
				continue
			}
			if stat(r.Digest) {
				held[r.Digest] = true
			}
		}
		return ctx.Err()
	}
	if err := walk(root); err != nil {
		return "", nil, err
	}
	if !held[root] {
		root = ""
	}
	return root, held, nil
}

// storedManifest reads manifest d of repository name from the store.
func (c *Cache) storedManifest(ctx context.Context, name string, d digest.Digest) (distribution.Manifest, error) {
	repo, err := c.repo(ctx, name)
	if err != nil {
		return nil, err
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	return ms.Get(ctx, d)
}

// isManifestType reports whether a descriptor's media type is a manifest's
// (an index's child), not a blob's.
func isManifestType(mt string) bool {
	switch mt {
	case v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, schema2.MediaTypeManifest, manifestlist.MediaTypeManifestList:
		return true
	}
	return false
}
