// Package cache decides, for one upstream, what a pull is served from: the
// local store, the upstream, or the local store marked stale because the
// upstream failed. It writes content into the upstream's distribution storage
// only after verifying it against its digest.
//
// The rules it implements:
//
//   - A tag is revalidated with one upstream HEAD on every resolve (or once per
//     freshness window: its tag rule's, else tag_freshness). An unchanged tag
//     costs that HEAD; a moved tag one more manifest GET, by digest, which is
//     verified before it is stored.
//   - Content addressed by digest is immutable: once cached it is served
//     without asking the upstream.
//   - Stale-if-error: when revalidation fails because the upstream is down,
//     slow, rate limiting, failing (5xx) or refusing credentials, a cached tag
//     is served and marked stale. A 404 from the upstream is not a failure: it
//     says the tag is gone, so the 404 is passed on and the local tag dropped.
//   - With nothing cached, the client gets the upstream's own status (a 429
//     keeps its Retry-After); an unreachable upstream is a 503.
//   - Concurrent misses for one blob share a single upstream GET. The bytes are
//     spooled to a file that every waiter reads while the download runs, so all
//     of them get their first byte at once. The last byte is held back until
//     the digest is verified: a corrupt or truncated upstream body never
//     completes a client's response and never enters the cache. The fill runs
//     on its own context, so it goes on when the client that started it leaves.
//   - A fill is written to a spool file and becomes visible only once its
//     digest is verified, by a rename into the store (on a shared bucket, by
//     completing a multipart upload): a process killed mid-fill leaves a
//     spool file, removed at the next start, never a servable blob.
package cache
