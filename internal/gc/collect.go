package gc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/cache"
	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// Eviction reasons, as reported and labelled in metrics.
const (
	ReasonUnused = "max_unused"
	ReasonSize   = "max_size"
)

// Policy is an upstream's eviction policy.
type Policy struct {
	MaxSize   int64         // bytes; 0: no cap
	MaxUnused time.Duration // 0: never
	// Free asks for at least this many bytes to be freed, least recently
	// pulled first: a fill that does not fit above the disk's watermark.
	Free int64
	// Pins are the config's pinned refs (upstreams[].pins), never evicted,
	// as are those stored at cache.PinsPath.
	Pins []string
}

// Store is what a collection works on: one upstream's storage.
type Store struct {
	Name   string
	Root   string
	Driver storagedriver.StorageDriver
	NS     distribution.Namespace
	Guard  *Guard
	// Cluster, set for a bucket shared by replicas, makes the collection
	// the cluster's only one and spares what any replica relies on.
	Cluster Cluster
	// MaxUpload is the longest a replica may take to store one blob
	// (fill_timeout); config.DefaultFillTimeout when zero. On a shared
	// bucket, a blob whose LastModified is less than this before the
	// collection started may belong to a pull the scan did not see.
	MaxUpload time.Duration
}

// StoreOf is the Store of a running upstream's cache.
func StoreOf(name string, c *cache.Cache, g *Guard) Store {
	return Store{Name: name, Root: c.Root(), Driver: c.Driver(), NS: c.Namespace(), Guard: g}
}

// Eviction is one evicted (or, in a dry run, evictable) manifest.
type Eviction struct {
	Repository string   `json:"repository"`
	Digest     string   `json:"digest"`
	Tags       []string `json:"tags,omitempty"`
	Reason     string   `json:"reason"`
}

// Result reports a collection.
type Result struct {
	Upstream     string        `json:"upstream"`
	DryRun       bool          `json:"dry_run"`
	Duration     time.Duration `json:"duration"`
	StoredBefore int64         `json:"stored_bytes_before"`
	StoredAfter  int64         `json:"stored_bytes_after"`
	FreedBytes   int64         `json:"freed_bytes"`
	FreedBlobs   int           `json:"freed_blobs"`
	Evicted      []Eviction    `json:"evicted,omitempty"`
	// Spared counts objects a concurrent pull claimed during the run.
	Spared int `json:"spared"`
	// PinnedBytes is what pins hold: never evicted.
	PinnedBytes int64 `json:"pinned_bytes,omitempty"`
	// Skipped says why a scheduled collection did not run: another
	// replica collected the shared bucket in the same slot.
	Skipped string `json:"skipped,omitempty"`
}

// MarshalJSON writes Duration as a string with units ("1.2s"), as a
// person reading `multiproxy gc` output expects, not in nanoseconds.
func (r Result) MarshalJSON() ([]byte, error) {
	type plain Result
	return json.Marshal(struct {
		plain
		Duration string `json:"duration"`
	}{plain(r), r.Duration.String()})
}

type manifest struct {
	repo    string
	digest  digest.Digest
	refs    []digest.Digest
	tags    []string
	pulled  time.Time
	evicted string // eviction reason, "" if kept
	pinned  bool   // held by a pin: no policy evicts it
}

// Collect runs one collection over st: evict by policy, then sweep every
// blob no remaining manifest references. With dryRun it only reports.
func Collect(ctx context.Context, st Store, p Policy, dryRun bool, log *slog.Logger) (Result, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	res := Result{Upstream: st.Name, DryRun: dryRun}
	if st.Guard == nil {
		st.Guard = &Guard{}
	}
	var fen fence
	if st.Cluster != nil && !dryRun {
		lead, err := st.Cluster.Lead(ctx)
		if err != nil {
			// Without the lease two replicas could sweep what the other
			// just stored: a shared bucket is never collected alone.
			return res, fmt.Errorf("gc %s: %w", st.Name, err)
		}
		defer lead.End()
		fen.lead = lead
		// Everything after this stops with the lease.
		ctx = lead.Context()
		// Every replica's cron fires in the same slot; the first one
		// through collects for the cluster, the others only wait.
		if isScheduled(ctx) && st.Cluster.CollectedSince(ctx, start) {
			res.Skipped = "another replica collected this upstream in the same slot"
			res.Duration = time.Since(start)
			return res, nil
		}
	}
	// Objects written after this were stored by some replica for a pull
	// running now; the scan below may not see what references them.
	var since time.Time
	if st.Cluster != nil && !dryRun {
		var err error
		if since, err = st.cutoff(ctx); err != nil {
			return res, fmt.Errorf("gc %s: %w", st.Name, err)
		}
	}
	st.Guard.begin()
	defer st.Guard.end()

	manifests, stalePulls, err := scanManifests(ctx, st)
	if err != nil {
		return res, fmt.Errorf("gc %s: scan manifests: %w", st.Name, err)
	}
	if err := markPinned(ctx, st, p.Pins, manifests); err != nil {
		return res, err
	}
	sizes := map[digest.Digest]int64{}
	err = st.NS.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		desc, err := st.NS.BlobStatter().Stat(ctx, d)
		if err != nil {
			return nil // deleted meanwhile
		}
		sizes[d] = desc.Size
		res.StoredBefore += desc.Size
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return res, fmt.Errorf("gc %s: scan blobs: %w", st.Name, err)
	}

	choose(manifests, sizes, res.StoredBefore, p, time.Now())
	notePinned(&res, manifests, sizes, p, log)

	marked := map[digest.Digest]bool{}
	mark := func(m *manifest) {
		marked[m.digest] = true
		for _, r := range m.refs {
			marked[r] = true
		}
	}
	vacuum := storage.NewVacuum(ctx, st.Driver)
	for _, m := range manifests {
		if m.evicted == "" {
			mark(m)
			continue
		}
		if dryRun {
			if st.Guard.wasUsed(m.digest) {
				mark(m)
				res.Spared++
				continue
			}
			res.Evicted = append(res.Evicted, evictionOf(m))
			continue
		}
		if fen.claimed(ctx, m.digest) {
			mark(m)
			res.Spared++
			continue
		}
		if err := fen.allow(ctx); err != nil {
			return res, fmt.Errorf("gc %s: %w", st.Name, err)
		}
		deleted, err := st.Guard.deleteUnlessUsed(m.digest, func() error {
			return vacuum.RemoveManifest(m.repo, m.digest, m.tags)
		})
		if err != nil {
			return res, fmt.Errorf("gc %s: evict %s@%s: %w", st.Name, m.repo, m.digest, err)
		}
		if !deleted {
			mark(m) // pulled during the run: it stays, with everything it needs
			res.Spared++
			continue
		}
		res.Evicted = append(res.Evicted, evictionOf(m))
		stalePulls = append(stalePulls, m.repo+"@"+m.digest.String())
		log.Info("evicted", "upstream", st.Name, "repository", m.repo, "digest", m.digest, "reason", m.evicted)
	}

	var swept []digest.Digest
	for d, size := range sizes {
		if marked[d] {
			continue
		}
		if dryRun {
			if st.Guard.wasUsed(d) {
				res.Spared++
				continue
			}
			res.FreedBytes += size
			res.FreedBlobs++
			continue
		}
		if fen.claimed(ctx, d) || st.newerThan(ctx, d, since) {
			res.Spared++
			continue
		}
		if err := fen.allow(ctx); err != nil {
			return res, fmt.Errorf("gc %s: %w", st.Name, err)
		}
		deleted, err := st.Guard.deleteUnlessUsed(d, func() error { return vacuum.RemoveBlob(d.String()) })
		if err != nil {
			return res, fmt.Errorf("gc %s: remove blob %s: %w", st.Name, d, err)
		}
		if !deleted {
			res.Spared++
			continue
		}
		swept = append(swept, d)
		res.FreedBytes += size
		res.FreedBlobs++
	}
	if !dryRun {
		if err := fen.allow(ctx); err != nil {
			return res, fmt.Errorf("gc %s: %w", st.Name, err)
		}
		leftovers, err := unlinkLayers(ctx, st, swept)
		if err != nil {
			return res, fmt.Errorf("gc %s: remove layer links: %w", st.Name, err)
		}
		if leftovers > 0 {
			log.Info("removed repositories that hold no manifest", "upstream", st.Name, "count", leftovers)
		}
	}
	if st.Cluster != nil && !dryRun {
		if len(stalePulls) > 0 {
			st.Cluster.ForgetPulls(ctx, stalePulls)
		}
		st.Cluster.Collected(ctx)
	}
	res.StoredAfter = res.StoredBefore - res.FreedBytes
	res.Duration = time.Since(start)
	return res, nil
}

func evictionOf(m *manifest) Eviction {
	return Eviction{Repository: m.repo, Digest: m.digest.String(), Tags: m.tags, Reason: m.evicted}
}

// scanManifests lists every manifest revision with what it references, the
// tags pointing at it and its last pull; and, on a shared bucket, the pull
// records of manifests it no longer holds.
func scanManifests(ctx context.Context, st Store) ([]*manifest, []string, error) {
	repos, ok := st.NS.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, nil, errors.New("storage cannot enumerate repositories")
	}
	var pulls map[string]time.Time
	if st.Cluster != nil {
		pulls = st.Cluster.LastPulls(ctx)
	}
	var out []*manifest
	err := repos.Enumerate(ctx, func(name string) error {
		named, err := reference.WithName(name)
		if err != nil {
			return fmt.Errorf("repository %q: %w", name, err)
		}
		repo, err := st.NS.Repository(ctx, named)
		if err != nil {
			return err
		}
		tagsOf := map[digest.Digest][]string{}
		tagSvc := repo.Tags(ctx)
		all, err := tagSvc.All(ctx)
		if err != nil && !isTagsMissing(err) {
			return fmt.Errorf("tags of %s: %w", name, err)
		}
		for _, tag := range all {
			desc, err := tagSvc.Get(ctx, tag)
			if err == nil {
				tagsOf[desc.Digest] = append(tagsOf[desc.Digest], tag)
			}
		}
		ms, err := repo.Manifests(ctx)
		if err != nil {
			return err
		}
		en, ok := ms.(distribution.ManifestEnumerator)
		if !ok {
			return errors.New("storage cannot enumerate manifests")
		}
		return en.Enumerate(ctx, func(d digest.Digest) error {
			m := &manifest{repo: name, digest: d, tags: tagsOf[d]}
			if t, ok := pulls[name+"@"+d.String()]; ok {
				m.pulled = t
				delete(pulls, name+"@"+d.String())
			} else if fi, err := st.Driver.Stat(ctx, storelayout.RevisionLink(name, d)); err == nil {
				// The filesystem keeps the last pull in the link's mtime;
				// in a bucket it is when the manifest was stored.
				m.pulled = fi.ModTime()
			}
			mf, err := ms.Get(ctx, d)
			if err != nil {
				// Its data is gone (an interrupted write): nothing to mark,
				// and the revision is evicted as unusable.
				m.evicted = ReasonUnused
				out = append(out, m)
				return nil
			}
			for _, r := range mf.References() {
				m.refs = append(m.refs, r.Digest)
			}
			out = append(out, m)
			return nil
		})
	})
	if err != nil && !isPathNotFound(err) {
		return nil, nil, err
	}
	// What is left of the records names manifests the store does not hold
	// (evicted elsewhere, or never stored).
	stale := make([]string, 0, len(pulls))
	for k := range pulls {
		stale = append(stale, k)
	}
	return out, stale, nil
}

// choose marks the manifests the policy evicts.
func choose(ms []*manifest, sizes map[digest.Digest]int64, stored int64, p Policy, now time.Time) {
	if p.MaxUnused > 0 {
		for _, m := range ms {
			if m.evicted == "" && !m.pinned && now.Sub(m.pulled) > p.MaxUnused {
				m.evicted = ReasonUnused
			}
		}
	}
	// Count referrers of each blob among the manifests that stay. A
	// manifest's own bytes are a blob too, held by its revision.
	refcount := map[digest.Digest]int{}
	for _, m := range ms {
		if m.evicted != "" {
			continue
		}
		refcount[m.digest]++
		for _, r := range m.refs {
			refcount[r]++
		}
	}
	freed := int64(0)
	release := func(d digest.Digest) {
		refcount[d]--
		if refcount[d] == 0 {
			freed += sizes[d]
		}
	}
	// Blobs already unreferenced are freed by the sweep regardless.
	for d, size := range sizes {
		if refcount[d] == 0 {
			freed += size
		}
	}
	if p.Free > 0 {
		// Freeing n bytes is a cap of what is stored less n.
		limit := max(stored-p.Free, 0)
		if p.MaxSize <= 0 || limit < p.MaxSize {
			p.MaxSize = limit
		}
		if p.MaxSize == 0 {
			p.MaxSize = -1 // everything may go; 0 would mean "no cap"
		}
	}
	if p.MaxSize == 0 || stored-freed <= p.MaxSize {
		return
	}
	order := make([]*manifest, 0, len(ms))
	for _, m := range ms {
		if m.evicted == "" && !m.pinned {
			order = append(order, m)
		}
	}
	// Untagged first, then least recently pulled: the manifest a tag
	// points at now is the last to go.
	sort.SliceStable(order, func(i, j int) bool {
		ti, tj := len(order[i].tags) > 0, len(order[j].tags) > 0
		if ti != tj {
			return !ti
		}
		return order[i].pulled.Before(order[j].pulled)
	})
	for _, m := range order {
		if stored-freed <= p.MaxSize {
			return
		}
		m.evicted = ReasonSize
		release(m.digest)
		for _, r := range m.refs {
			release(r)
		}
	}
}

func isPathNotFound(err error) bool {
	var pnf storagedriver.PathNotFoundError
	return errors.As(err, &pnf)
}

func isTagsMissing(err error) bool {
	var unknown distribution.ErrRepositoryUnknown
	return errors.As(err, &unknown) || isPathNotFound(err)
}
