package admin

import (
	"bytes"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Status is the process at a glance: the body of GET /api/v1/status and
// what the status page at / renders.
type Status struct {
	Time      time.Time        `json:"time"`
	Ready     bool             `json:"ready"`
	Upstreams []UpstreamStatus `json:"upstreams"`
}

// UpstreamStatus is one upstream. Counters are totals since the process
// started, as on /metrics. Nullable fields are null until there is
// something true to say: hit_ratio before the first lookup, stored_bytes
// before the first storage walk finishes, last_gc and last_recycle until
// one has run in this process, ratelimit_remaining until the upstream sends
// the header (only Docker Hub does).
type UpstreamStatus struct {
	Name string `json:"name"`
	// Listen is the bound address of the upstream's listener.
	Listen  string `json:"listen"`
	Remote  string `json:"remote"`
	Serving bool   `json:"serving"`

	State string    `json:"state"` // reachable, stale, down, degraded or unknown
	Since time.Time `json:"since"`
	// Reason says why the upstream is degraded ("storage: commit failing
	// since ..."); empty in any other state.
	Reason    string       `json:"reason,omitempty"`
	LastError string       `json:"last_error,omitempty"`
	LastStale *time.Time   `json:"last_stale,omitempty"`
	History   []Transition `json:"history"`

	HitRatio           *float64    `json:"hit_ratio"`
	CacheHits          int64       `json:"cache_hits"`
	CacheMisses        int64       `json:"cache_misses"`
	ServedBytes        ServedBytes `json:"served_bytes"`
	FetchedBytes       int64       `json:"upstream_fetched_bytes"`
	StaleServes        int64       `json:"stale_serves"`
	StoredBytes        *int64      `json:"stored_bytes"`
	StoredAt           *time.Time  `json:"stored_bytes_at,omitempty"`
	LastGC             *GCRun      `json:"last_gc"`
	LastRecycle        *Recycle    `json:"last_recycle"`
	RecycleFailures    int64       `json:"recycle_failures"`
	RateLimited        int64       `json:"rate_limited"`
	RateLimitRemaining *float64    `json:"ratelimit_remaining"`

	// PinnedBytes is what pins hold (never evicted); null without pins.
	PinnedBytes *int64 `json:"pinned_bytes"`
}

// ServedBytes splits the bytes sent to clients by where they came from.
type ServedBytes struct {
	Cache    int64 `json:"cache"`
	Upstream int64 `json:"upstream"`
}

// Transition is one change of an upstream's state.
type Transition struct {
	From   string    `json:"from"`
	To     string    `json:"to"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// GCRun is the last garbage collection run of an upstream.
type GCRun struct {
	At              time.Time `json:"at"`
	Result          string    `json:"result"`
	DurationSeconds float64   `json:"duration_seconds"`
	FreedBytes      int64     `json:"freed_bytes"`
	FreedObjects    int64     `json:"freed_objects"`
}

// Recycle is the last completed recycle of an upstream.
type Recycle struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// pageRefresh is how often the status page reloads itself.
const pageRefresh = 10

// page is self-contained: no scripts, fonts or stylesheets from anywhere,
// so it works on an air-gapped host and cannot leak who is looking.
var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"bytes": humanBytes,
	"ago":   ago,
	"port":  port,
	"pct": func(r *float64) string {
		if r == nil {
			return "—"
		}
		return fmt.Sprintf("%.1f %%", *r*100)
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"refresh": func() int { return pageRefresh },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{refresh}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>multiproxy status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
p.meta { color: #59636e; margin: 0 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { padding: .4rem .7rem; border-bottom: 1px solid #d1d9e0; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.when { white-space: nowrap; }
.state { font-weight: 600; }
.reachable { color: #1a7f37; }
.stale { color: #9a6700; }
.down { color: #d1242f; }
.degraded { color: #bc4c00; }
.unknown { color: #59636e; }
small { color: #59636e; }
</style>
</head>
<body>
<h1>multiproxy</h1>
<p class="meta">{{if .Ready}}ready{{else}}<span class="down">not ready</span>{{end}} · {{len .Upstreams}} upstream{{if ne (len .Upstreams) 1}}s{{end}} · as of <time datetime="{{rfc3339 .Time}}">{{rfc3339 .Time}}</time> · refreshes every {{refresh}} s</p>
<table>
<thead><tr>
<th>Upstream</th><th>Port</th><th>Remote</th><th>State</th><th>Hit ratio</th>
<th>Served from cache</th><th>Served from upstream</th><th>Stored</th>
<th>Last GC</th><th>Last recycle</th><th>Rate limit remaining</th>
</tr></thead>
<tbody>
{{- $now := .Time}}
{{- range .Upstreams}}
<tr data-upstream="{{.Name}}">
<td>{{.Name}}{{if not .Serving}} <small class="down">(not serving)</small>{{end}}</td>
<td class="num" title="{{.Listen}}">{{port .Listen}}</td>
<td>{{.Remote}}</td>
<td><span class="state {{.State}}">{{.State}}</span> <small title="{{rfc3339 .Since}}">since {{ago $now .Since}}</small>{{if .Reason}}<br><small class="reason">{{.Reason}}</small>{{end}}{{if .LastError}}<br><small>{{.LastError}}</small>{{end}}</td>
<td class="num" title="{{.CacheHits}} hits, {{.CacheMisses}} misses">{{pct .HitRatio}}</td>
<td class="num">{{bytes .ServedBytes.Cache}}</td>
<td class="num">{{bytes .ServedBytes.Upstream}}</td>
<td class="num">{{with .StoredBytes}}{{bytes .}}{{else}}—{{end}}{{with .PinnedBytes}}<br><small>pinned {{bytes .}}</small>{{end}}</td>
<td class="when">{{with .LastGC}}<span title="{{rfc3339 .At}}">{{ago $now .At}}</span> <small>{{.Result}}, freed {{bytes .FreedBytes}}</small>{{else}}<small>none since start</small>{{end}}</td>
<td class="when">{{with .LastRecycle}}<span title="{{rfc3339 .At}}">{{ago $now .At}}</span> <small>{{.Reason}}</small>{{else}}<small>none since start</small>{{end}}</td>
<td class="num">{{with .RateLimitRemaining}}{{printf "%.0f" .}}{{else}}—{{end}}</td>
</tr>
{{- end}}
</tbody>
</table>
</body>
</html>
`))

func writePage(w http.ResponseWriter, req *http.Request, log *slog.Logger, st Status) {
	// Rendered to a buffer first so a template error is a clean 500, not
	// half a page.
	var buf bytes.Buffer
	if err := page.Execute(&buf, st); err != nil {
		writeError(w, req, log, fmt.Errorf("render status page: %w", err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ago says how long before now t was, coarsely: the page is for a glance.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d s ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%d days ago", int(d/(24*time.Hour)))
	}
}

// port is the port of a listen address, which is what an operator types
// into a mirror config; the full address is in the cell's title.
func port(addr string) string {
	if _, p, err := net.SplitHostPort(addr); err == nil {
		return p
	}
	return addr
}
