package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/multiproxy/multiproxy/internal/storelayout"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// Shared configures a cache whose store is a bucket shared by replicas.
type Shared struct {
	// Name is the upstream's name, which scopes leases.
	Name string
	// TierDir and TierMax are the local copies (see tier).
	TierDir string
	TierMax int64
	// Redirect answers GETs of blobs in the bucket with a presigned URL.
	Redirect bool
	// Coord, if set, makes one replica of the cluster fetch each blob.
	Coord Coordinator
	// Peers fetches from other replicas' running fills; nil: a client
	// of the cache's own, whose dial and wait for headers are bounded by
	// the upstream timeout (the peer answers once its upstream has) and
	// which follows no redirect: a peer that redirects is not one.
	Peers *http.Client
	// PeerToken, if set, is sent to peers as a bearer token
	// (coordination.peer_token_file).
	PeerToken string
}

// Coordinator is the cluster's fill lease service and pins lock
// (internal/coord).
type Coordinator interface {
	// AcquireFill returns a lease if this replica is to fetch d, or the
	// replica fetching it (a zero Holder if it just finished).
	AcquireFill(ctx context.Context, d digest.Digest) (Lease, Holder, error)
	// RevokeFill removes d's lease if h still holds it, and reports
	// whether it did; a lease released or taken since is left alone.
	RevokeFill(ctx context.Context, d digest.Digest, h Holder) (bool, error)
	// Self is this replica's own peer address.
	Self() string
	// TTL is how long a dead holder's lease blocks the others.
	TTL() time.Duration
	// LockPins waits for the cluster's lease on this upstream's pins
	// file, which every replica changes it under; it fails while Redis
	// does not answer.
	LockPins(ctx context.Context) (PinsLock, error)
}

// PinsLock is a held pins lease.
type PinsLock interface {
	Release()
	// Valid is nil while the lease is surely still held.
	Valid() error
}

// Lease is a held fill lease.
type Lease interface{ Release() }

// Holder is the replica holding a blob's fill lease, as read from Redis.
type Holder struct {
	// Peer is its peer address.
	Peer string
	// Lease names its hold of the lease (not just its address), for
	// RevokeFill to compare.
	Lease string
	// Earlier is set when the holder is an earlier process of this
	// replica, at its own address: a restart left the lease behind.
	Earlier bool
}

// Where a fill's bytes come from, as logged and labelled in metrics.
const (
	SourceUpstream = "upstream"
	SourceBucket   = "bucket"
	SourcePeer     = "peer"
)

// source is an open body a fill reads from, and what to release after.
type source struct {
	kind  string
	body  io.ReadCloser
	size  int64
	lease Lease
	// from is the blob offset of body's first byte: where a resumed fill
	// asked to start when the source honoured it, else 0.
	from int64
	// peer is the replica a peer source streams from.
	peer string
}

func (s *source) Close() {
	_ = s.body.Close()
	if s.lease != nil {
		s.lease.Release()
	}
}

// avoid is what a fill that moves on does not go back to: a peer whose
// stream stalled, and the bucket once a call to it failed or ran out of
// time (a hung store would cost every later look another timeout).
type avoid struct {
	peer   string
	bucket bool
}

// openSource finds where a fill reads from. On the filesystem that is
// always the upstream. On a shared bucket: the bucket if the blob is
// there; else, with coordination, the upstream if this replica wins the
// blob's lease, or the winner's running fill. Waiting for a winner is
// bounded: past the lease TTL and the upstream timeout this replica
// fetches alone, since a pull must never hang on coordination.
func (c *Cache) openSource(ctx context.Context, name string, d digest.Digest, av *avoid) (*source, error) {
	return c.openSourceAt(ctx, name, d, 0, av)
}

// openSourceAt is openSource for the bytes from offset on, for a fill that
// has the bytes before offset already, hashed: the bucket reads from
// there, and an upstream or a peer is asked for a range. One that ignores
// the range sends the whole blob again, and the bytes before offset are
// skipped; the digest check at the end covers every source either way.
// av is what not to ask again (see findSource); the sources that fail
// meanwhile are added to it.
func (c *Cache) openSourceAt(ctx context.Context, name string, d digest.Digest, offset int64, av *avoid) (*source, error) {
	s, err := c.findSource(ctx, name, d, offset, av)
	if err != nil || s.from == offset {
		return s, err
	}
	if _, err := io.CopyN(io.Discard, s.body, offset-s.from); err != nil {
		s.Close()
		return nil, fmt.Errorf("skip to byte %d of a resumed fill: %w", offset, err)
	}
	return s, nil
}

// findSource opens a source of d from offset on; see openSourceAt. A peer
// that does not answer within the upstream timeout (a black-holed or hung
// replica, which may still renew its lease), or whose stream stalled, or
// whose address in Redis is not one, or that refuses this replica's token
// or redirects, is not waited for: this replica fetches alone, as it does
// when a holder does not deliver in time. A holder whose peer port refuses
// the connection is dead, and its lease is taken over at once (takeOver),
// as is a lease this replica's own previous process left (a restart).
func (c *Cache) findSource(ctx context.Context, name string, d digest.Digest, offset int64, av *avoid) (*source, error) {
	if c.shared == nil {
		return c.upstreamSource(ctx, name, d, nil, offset)
	}
	if s, ok := c.bucketSource(ctx, d, offset, av); ok {
		return s, nil
	}
	co := c.shared.Coord
	if co == nil {
		return c.upstreamSource(ctx, name, d, nil, offset)
	}
	deadline := time.Now().Add(co.TTL() + 2*c.client().Timeout())
	for {
		lease, holder, err := co.AcquireFill(ctx, d)
		owner := holder.Peer
		now := false // ask again without waiting
		if err != nil {
			c.obs.FillUncoordinated()
			c.log.Warn("fill without coordination", "digest", d, "err", err)
			return c.upstreamSource(ctx, name, d, nil, offset)
		}
		if lease != nil {
			// Another replica may have committed between our look at the
			// bucket and the lease.
			if s, ok := c.bucketSource(ctx, d, offset, av); ok {
				lease.Release()
				return s, nil
			}
			return c.upstreamSource(ctx, name, d, lease, offset)
		}
		if holder.Earlier && c.takeOver(ctx, d, holder) {
			// This replica's own previous process held it when it
			// died or restarted: no one will deliver or renew it, and
			// its address (ours) answers, so no refusal would show it.
			continue
		}
		if owner != "" && owner != co.Self() {
			if owner == av.peer {
				c.obs.FillUncoordinated()
				c.log.Warn("fill lease holder stalled; fetching alone", "digest", d, "holder", owner)
				return c.upstreamSource(ctx, name, d, nil, offset)
			}
			s, err := c.peerSource(ctx, owner, d, offset)
			if err == nil {
				return s, nil
			}
			if errors.Is(err, syscall.ECONNREFUSED) && c.takeOver(ctx, d, holder) {
				// Its lease is gone now: ask for it again at once.
				now = true
			}
			if errors.Is(err, errPeerRefused) {
				// Logged once per peer by peerSource: a token that
				// differs refuses every blob.
				c.obs.FillUncoordinated()
				c.log.Debug("fill lease holder refused this replica; fetching alone", "digest", d, "holder", owner, "err", err)
				return c.upstreamSource(ctx, name, d, nil, offset)
			}
			if errors.Is(err, errBadOwner) || isTimeout(err) {
				c.obs.FillUncoordinated()
				c.log.Warn("fill lease holder unreachable; fetching alone", "digest", d, "holder", owner, "err", err)
				return c.upstreamSource(ctx, name, d, nil, offset)
			}
			// Its fill failed or ended (or it died, and its lease
			// could not be revoked): the lease tells which once it is
			// released or expires.
			c.log.Debug("peer fill unavailable", "peer", owner, "digest", d, "err", err)
		}
		if time.Now().After(deadline) {
			c.obs.FillUncoordinated()
			c.log.Warn("fill lease holder did not deliver; fetching alone", "digest", d, "holder", owner)
			return c.upstreamSource(ctx, name, d, nil, offset)
		}
		if now {
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if s, ok := c.bucketSource(ctx, d, offset, av); ok {
			return s, nil
		}
	}
}

// takeOver revokes the fill lease of a holder whose peer port refused a
// connection: its host answers but nothing listens there, so its process
// is gone (killed, crashed, restarting) and its fill with it. Waiting for
// its lease to expire would hold every client streaming from it for the
// rest of the lease TTL; revoked, the lease is this replica's or
// another's at the next AcquireFill, and the new holder fetches from the
// upstream from where its fill got to. It reports whether to ask for the
// lease again at once: the holder's lease is gone, revoked here or
// released, revoked or expired meanwhile. With Redis failing it is false,
// and findSource goes on as for any peer that has no fill to give.
//
// A refusal is the only failure taken for death. A peer that times out
// or drops packets (a black-holed or frozen VM) may still be fetching and
// renewing its lease: it is fetched around without the lease, and its
// lease left to run out. And a holder revoked while alive (its peer
// listener gone, its process not) loses no pull: the fill lease guards
// nothing but duplicate fetches. Its next renewal finds the key gone and
// stops renewing; nothing in its fill reads the lease, so the fill goes on
// to the end for its own clients, and commitShared uploads it as it would
// a fill without the lease (a multipart upload completed after the digest
// check: two replicas completing the same verified blob write the same
// bytes); its Release removes only its own hold. The cost is at most
// one more upstream fetch of the blob.
func (c *Cache) takeOver(ctx context.Context, d digest.Digest, h Holder) bool {
	revoked, err := c.shared.Coord.RevokeFill(ctx, d, h)
	if err != nil {
		c.log.Debug("revoke the fill lease of a holder that refused", "digest", d, "holder", h.Peer, "err", err)
		return false
	}
	if revoked {
		c.obs.FillTakeover()
		c.log.Warn("fill lease holder is gone; taking its lease over", "holder", h.Peer, "digest", d)
	}
	return true
}

// isTimeout reports a wait that ran out: a dial, a response's headers or
// an idle body.
func isTimeout(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var ue *upstream.Error
	return errors.As(err, &ue) && ue.Cause == upstream.CauseTimeout
}

func (c *Cache) upstreamSource(ctx context.Context, name string, d digest.Digest, lease Lease, offset int64) (*source, error) {
	resp, err := c.client().GetBlobFrom(ctx, name, d, offset)
	if err == nil && offset > 0 {
		from, ok := bodyStart(resp, offset)
		if ok {
			return &source{kind: SourceUpstream, body: resp.Body, size: resp.ContentLength, lease: lease, from: from}, nil
		}
		// A range that is not the one asked for: start over.
		c.log.Warn("upstream answered a resumed fill with another range; fetching the whole blob",
			"digest", d, "offset", offset, "content_range", resp.Header.Get("Content-Range"))
		resp.Body.Close()
		resp, err = c.client().GetBlob(ctx, name, d)
	}
	if err != nil {
		c.upstreamFailed(KindBlob, err)
		if lease != nil {
			lease.Release()
		}
		return nil, err
	}
	return &source{kind: SourceUpstream, body: resp.Body, size: resp.ContentLength, lease: lease}, nil
}

// bodyStart is the blob offset of resp's first byte for a request of the
// bytes from offset on: 0 for a whole blob (200), offset for a 206 whose
// Content-Range starts there. ok is false for any other answer.
func bodyStart(resp *http.Response, offset int64) (from int64, ok bool) {
	switch resp.StatusCode {
	case http.StatusOK:
		return 0, true
	case http.StatusPartialContent:
		rest, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes ")
		if !ok {
			return 0, false
		}
		first, _, ok := strings.Cut(rest, "-")
		if !ok {
			return 0, false
		}
		n, err := strconv.ParseInt(first, 10, 64)
		return n, err == nil && n == offset
	}
	return 0, false
}

// bucketCall bounds one call to the bucket by the upstream timeout: a hung
// object store must not hold a fill, and every client waiting on it, for
// the fill's whole timeout.
func (c *Cache) bucketCall(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.client().Timeout())
}

// bucketSource opens d in the bucket from offset on, if it is there and
// av does not rule the bucket out. The Stat and the open are each bounded
// by the upstream timeout, and so is each read of the body (a stalled
// store ends it with an error, and the fill resumes elsewhere). A bucket
// that fails or runs out of time other than by not having d is added to
// av: the fill gets d elsewhere without asking it again.
func (c *Cache) bucketSource(ctx context.Context, d digest.Digest, offset int64, av *avoid) (*source, bool) {
	if av.bucket {
		return nil, false
	}
	sctx, scancel := c.bucketCall(ctx)
	desc, err := c.registry.BlobStatter().Stat(sctx, d)
	scancel()
	if err != nil {
		c.bucketFailed(ctx, d, "stat", err, av)
		return nil, false
	}
	// The body lives on this context: the open's timer is stopped once it
	// returns, and the idle timer takes over.
	rctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(c.client().Timeout(), cancel)
	r, err := c.driver.Reader(rctx, storelayout.BlobData(d), offset)
	if !t.Stop() || err != nil {
		cancel()
		if r != nil {
			r.Close()
		}
		// Removed meanwhile (a collection), or the store did not answer
		// in time: fetch it again rather than wait.
		if err == nil {
			err = context.DeadlineExceeded
		}
		c.bucketFailed(ctx, d, "open", err, av)
		return nil, false
	}
	body := upstream.IdleBody(r, c.client().Timeout(), cancel)
	return &source{kind: SourceBucket, body: body, size: desc.Size, from: offset}, true
}

// bucketFailed rules the bucket out for the rest of a fill (av) when err
// is not just d missing from it.
func (c *Cache) bucketFailed(ctx context.Context, d digest.Digest, op string, err error, av *avoid) {
	var missing storagedriver.PathNotFoundError
	if errors.Is(err, distribution.ErrBlobUnknown) || errors.As(err, &missing) || ctx.Err() != nil {
		return
	}
	av.bucket = true
	c.log.Warn("bucket failed during a fill; getting the blob elsewhere", "op", op, "digest", d, "err", err)
}

// resume finds another source for a fill whose peer stream broke (the
// replica fetching the blob died, or its fill failed) or stalled, or whose
// bucket read failed or stalled: the bucket if the blob got there and was
// not the source that broke, else whoever holds the lease now, this
// replica included once a dead holder's lease is revoked (its peer port
// refuses) or expires, or the upstream at once if the peer stalled. The new source is asked for the bytes from
// offset on; the bytes before it were hashed already, and the digest check
// at the end covers them all. The fill's clients keep their connection
// meanwhile and never see the break. An upstream failing mid-body is not
// resumed: that error is its clients' to see.
func (c *Cache) resume(ctx context.Context, broken *source, name string, d digest.Digest, offset int64, cause error, av *avoid) *source {
	if c.shared == nil || ctx.Err() != nil {
		return nil
	}
	switch broken.kind {
	case SourcePeer:
		if isTimeout(cause) {
			av.peer = broken.peer
		}
	case SourceBucket:
		av.bucket = true
	default:
		return nil
	}
	c.log.Warn("fill source broke; resuming the fill", "source", broken.kind, "peer", broken.peer, "digest", d, "offset", offset, "err", cause)
	s, err := c.openSourceAt(ctx, name, d, offset, av)
	if err != nil {
		c.log.Warn("resume fill", "digest", d, "err", err)
		return nil
	}
	c.obs.FillSource(s.kind)
	return s
}

// commitShared stores a verified fill: into the bucket first if it came
// from the upstream (the lease is still held, so no other replica fetches
// meanwhile), then into the local tier. The bucket object is written by a
// multipart upload completed only here, after the digest check, so no
// torn or unverified object is ever visible under a blob's path.
func (c *Cache) commitShared(ctx context.Context, f *fill, repo distribution.Repository, kind string) error {
	if kind == SourceUpstream {
		if err := c.upload(ctx, f); err != nil {
			return err
		}
		if ok, err := c.linkLocal(ctx, repo, f.digest); err != nil || !ok {
			return fmt.Errorf("link blob: %v", err)
		}
	}
	if err := c.shared.tier.add(f.digest, f.path, f.bytes()); err != nil {
		return err
	}
	c.landedAt(f, c.shared.tier.path(f.digest))
	return nil
}

// upload copies the verified spool into the bucket.
func (c *Cache) upload(ctx context.Context, f *fill) error {
	release := c.guard.Hold()
	defer release()
	c.guard.Use(f.digest)
	r, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("reopen spool: %w", err)
	}
	defer r.Close()
	// The clients have their bytes; what is left is storing them for the
	// cluster. A stopping process (ctx cancelled) gives the upload a grace
	// period to finish rather than throw the download away.
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(uploadGrace, cancel) })
	defer stop()
	w, err := c.driver.Writer(uctx, storelayout.BlobData(f.digest), false)
	if err != nil {
		return fmt.Errorf("start upload: %w", err)
	}
	if _, err := io.Copy(w, r); err != nil {
		// Aborted on a context of its own, so the parts of an upload cut
		// short do not linger in the bucket.
		actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer acancel()
		if aerr := w.Cancel(actx); aerr != nil {
			c.log.Warn("abort upload", "digest", f.digest, "err", aerr)
		}
		return fmt.Errorf("upload: %w", err)
	}
	// Commit aborts the upload itself when it fails.
	if err := w.Commit(uctx); err != nil {
		return fmt.Errorf("complete upload: %w", err)
	}
	return nil
}

// uploadGrace is how long an upload to the bucket may go on once the
// process is stopping.
const uploadGrace = 10 * time.Second

// LocalCopyBytes is what the local copies of a cache on a shared bucket
// take on disk; ok is false on the filesystem, which has none.
func (c *Cache) LocalCopyBytes() (n int64, ok bool) {
	if c.shared == nil {
		return 0, false
	}
	return c.shared.tier.bytes(), true
}

// RedirectURL returns a presigned URL of d in the bucket for r, when the
// cache redirects and the bucket holds d. A blob with a local copy is
// served from it instead: it is as fast and costs no bucket request.
func (c *Cache) RedirectURL(r *http.Request, name string, d digest.Digest) (string, bool) {
	if c.shared == nil || !c.shared.Redirect {
		return "", false
	}
	if _, ok := c.shared.tier.stat(d); ok {
		return "", false
	}
	repo, err := c.repo(r.Context(), name)
	if err != nil {
		return "", false
	}
	if ok, _ := c.linkLocal(r.Context(), repo, d); !ok {
		return "", false
	}
	u, err := c.driver.RedirectURL(r, storelayout.BlobData(d))
	if err != nil || u == "" {
		return "", false
	}
	c.obs.Hit(KindBlob)
	return u, true
}

// sharedState is a Shared with its open tier.
type sharedState struct {
	Shared
	tier *tier
	// refused holds the peers (host:port) whose 401 or 403 was logged.
	refused sync.Map
}

// leaseManifest makes one replica of the cluster fetch a manifest, as
// openSource does for blobs: registries such as Docker Hub count manifest
// GETs against their pull limits. It returns stored when another replica
// stored the manifest meanwhile, or the lease to hold while this one
// fetches it (nil: fetch alone, Redis unavailable or the holder silent for
// one upstream timeout, which a manifest GET never needs).
func (c *Cache) leaseManifest(ctx context.Context, repo distribution.Repository, d digest.Digest) (stored bool, lease Lease) {
	co := c.shared.Coord
	deadline := time.Now().Add(c.client().Timeout())
	for {
		lease, _, err := co.AcquireFill(ctx, d)
		if err != nil {
			c.obs.FillUncoordinated()
			return false, nil
		}
		if lease != nil {
			if c.hasManifest(ctx, repo, d) {
				lease.Release()
				return true, nil
			}
			return false, lease
		}
		if time.Now().After(deadline) {
			c.obs.FillUncoordinated()
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-time.After(50 * time.Millisecond):
		}
		if c.hasManifest(ctx, repo, d) {
			return true, nil
		}
	}
}
