package gc

// What a collection of a bucket shared by replicas needs beyond a
// filesystem's: the cluster's lead and claims, and the bucket's clock.

import (
	"context"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/storelayout"
)

// Cluster is what collecting a bucket that other replicas serve from needs
// (internal/coord through internal/serve).
type Cluster interface {
	// Lead waits until this replica is the cluster's one collector and
	// every replica reports what it relies on.
	Lead(ctx context.Context) (Leadership, error)
	// CollectedSince reports whether some replica finished a collection
	// of this upstream after t; Collected records that this one did.
	CollectedSince(ctx context.Context, t time.Time) bool
	Collected(ctx context.Context)
	// LastPulls is the cluster's last pull of each "repo@digest".
	LastPulls(ctx context.Context) map[string]time.Time
	// ForgetPulls drops the records of manifests the store no longer
	// holds, so the records stay as many as the manifests.
	ForgetPulls(ctx context.Context, keys []string)
}

// Leadership is a held collection lease, fenced by its token.
type Leadership interface {
	// Context is cancelled once the lease is lost (renewals failed for a
	// whole TTL, or Redis no longer holds it): from then on another
	// replica may be collecting.
	Context() context.Context
	// Valid is nil while the lease is surely held by this process's
	// clock; it costs nothing, so it is asked before every deletion.
	Valid() error
	// Check asks the cluster that the lease and the announcement still
	// hold this collection's token; it is asked before every batch.
	Check(ctx context.Context) error
	// Claimed reports whether a replica relied on d during this
	// collection.
	Claimed(ctx context.Context, d digest.Digest) bool
	// End announces the end and gives the lease back.
	End()
}

// checkEvery is how many deletions go between two checks of the lease in
// Redis: a round trip per deletion would double a sweep's requests, and the
// local check before each one already stops a collector that was paused.
const checkEvery = 64

// fence stops a collection that no longer holds the lease before it
// deletes anything else.
type fence struct {
	lead Leadership // nil when not collecting a shared bucket
	n    int
}

func (f *fence) allow(ctx context.Context) error {
	if f.lead == nil {
		return nil
	}
	if err := f.lead.Valid(); err != nil {
		return fmt.Errorf("stopped before deleting: %w", err)
	}
	if f.n%checkEvery == 0 {
		if err := f.lead.Check(ctx); err != nil {
			return fmt.Errorf("stopped before deleting: %w", err)
		}
	}
	f.n++
	return nil
}

// claimed reports whether another replica relies on d.
func (f *fence) claimed(ctx context.Context, d digest.Digest) bool {
	return f.lead != nil && f.lead.Claimed(ctx, d)
}

// markerPath is the object whose LastModified is a collection's start, by
// the bucket's clock. It is outside /docker, which distribution walks.
const markerPath = "/multiproxy/gc-start"

// cutoff is the LastModified after which a blob may have been written
// during this collection. It is read off the bucket's clock, not this
// replica's, which may run ahead of it: a marker object is written now and
// its LastModified taken as the start. A multipart object's LastModified is
// when its upload began, so one finishing after the start began at most
// MaxUpload earlier; and LastModified has one-second resolution.
func (st Store) cutoff(ctx context.Context) (time.Time, error) {
	if err := st.Driver.PutContent(ctx, markerPath, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return time.Time{}, fmt.Errorf("write the collection start marker: %w", err)
	}
	fi, err := st.Driver.Stat(ctx, markerPath)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the collection start marker: %w", err)
	}
	maxUpload := st.MaxUpload
	if maxUpload <= 0 {
		maxUpload = config.DefaultFillTimeout
	}
	return fi.ModTime().Add(-maxUpload - time.Second), nil
}

// newerThan reports whether a shared bucket's blob d was written after
// since: by a replica storing it for a pull whose manifest the scan may
// have missed. On a filesystem the Guard already covers that.
func (st Store) newerThan(ctx context.Context, d digest.Digest, since time.Time) bool {
	if st.Cluster == nil {
		return false
	}
	fi, err := st.Driver.Stat(ctx, storelayout.BlobData(d))
	return err == nil && fi.ModTime().After(since)
}
