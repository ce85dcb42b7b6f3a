// Package gc collects garbage and evicts images from each upstream's store,
// on a staggered cron schedule, while the upstream keeps serving.
//
// # Why collecting online is safe
//
// distribution's mark-and-sweep is offline-only: a manifest cached between
// its mark and its sweep loses its blobs. Here every path by which the cache
// comes to rely on content reports it to the upstream's Guard first:
//
//   - storing a manifest reports the manifest and every digest it references,
//     before anything is written;
//   - serving or linking a blob reports the blob before it is looked up;
//   - a pull of a cached manifest (by tag or digest) reports the manifest.
//
// Work that relies on the store (a manifest put, a blob commit, serving a
// manifest) also takes a Hold on the Guard, and a collection switches the
// Guard on and then waits for the holds taken before that: work that claimed
// its digests while the Guard was still off has finished before the scan.
// A hold never waits for a collection to finish; a pull's claims and holds
// wait only while the sweep deletes one blob or manifest, which it does
// under the Guard's mutex so that a claim lands before or after it. The
// Guard is switched off after the sweep.
//
// # Eviction
//
// A manifest's last pull is the mtime of its revision link (see
// cache.RevisionLinkPath). max_unused evicts manifests not pulled for that
// long. max_size evicts least recently pulled manifests until the blobs they
// alone hold bring the store under the cap; untagged manifests go before
// tagged ones, so the manifest a tag currently points at is the last to go.
// Blobs no remaining manifest references are then swept, and their bytes are
// really freed on disk. Manifests a pin holds (upstreams[].pins, and those at
// cache.PinsPath) are never evicted, by any policy: see pins.go.
//
// # Scheduling
//
// Each upstream collects on its own cron schedule (gc.schedule). Without one,
// upstreams get weekly slots DefaultSpacing apart, so no two collect
// together; one process-wide slot serialises runs anyway, so a run that would
// overlap another waits for it.
package gc
