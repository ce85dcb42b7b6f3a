// Package warm fills the cache ahead of a rollout: it pulls a list of image
// references through each upstream's own proxy handler, as a client would,
// so that every manifest and blob is fetched once, verified and counted.
//
// This file is the wire protocol of the admin API's POST /api/v1/warm,
// shared by the server and the `multiproxy warm` command.
package warm

// Request is the body of POST /api/v1/warm.
type Request struct {
	// Images are image references as written in a manifest: a name with
	// a tag, a digest, or both.
	Images []string `json:"images"`
	// Platforms chooses the manifests of an index, as os/arch[/variant].
	// Empty means the config's warm.platforms, else linux/amd64.
	Platforms []string `json:"platforms,omitempty"`
	// DryRun answers with the plan only: which upstream warms what.
	DryRun bool `json:"dry_run,omitempty"`
}

// The kinds of Event, in the order an image meets them.
const (
	EventPlan     = "plan"     // Image is routed to Upstream
	EventSkipped  = "skipped"  // Image is not warmed, for Reason
	EventStart    = "start"    // Image's manifests are resolved; Total bytes of blobs to warm
	EventProgress = "progress" // Bytes of Total are cached so far
	EventDone     = "done"     // every manifest and blob of Image is cached
	EventFailed   = "failed"   // Image is not fully cached, for Error
	EventStopped  = "stopped"  // Upstream's warming stopped early, for Reason
	EventSummary  = "summary"  // the last event
)

// Event is one line of the NDJSON answer to POST /api/v1/warm.
type Event struct {
	Event    string `json:"event"`
	Image    string `json:"image,omitempty"`
	Upstream string `json:"upstream,omitempty"`
	Digest   string `json:"digest,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Error    string `json:"error,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
	Total    int64  `json:"total,omitempty"`
	Blobs    int    `json:"blobs,omitempty"`

	// Summary fields.
	Cached  int     `json:"cached,omitempty"`
	Failed  int     `json:"failed,omitempty"`
	Skipped int     `json:"skipped,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
}
