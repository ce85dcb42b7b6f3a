package testsupport

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/multiproxy/multiproxy/internal/config"
	"github.com/multiproxy/multiproxy/internal/serve"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// ProxyUpstream is one upstream of a test proxy.
type ProxyUpstream struct {
	Name string
	Reg  *Registry
	// URL, if set, is the remote instead of Reg.URL(), e.g. a Front's.
	URL string
	// Tweak adjusts the upstream's config (timeouts, freshness, ...).
	Tweak func(*config.Upstream)
}

// Proxy is multiproxy started in-process on 127.0.0.1 ports.
type Proxy struct {
	t       testing.TB
	Config  config.Config
	Process *serve.Process
	logs    *SyncBuffer
	stopped bool
}

// NewProxyConfig builds a config for ups with storage under a fresh temp dir,
// every listener on a free 127.0.0.1 port and a 1 s upstream timeout.
func NewProxyConfig(t testing.TB, ups ...ProxyUpstream) config.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Config{
		DataDir:         dir,
		ShutdownTimeout: 5 * time.Second,
		LogLevel:        "debug",
		Admin:           config.Admin{Listen: "127.0.0.1:0"},
	}
	for _, u := range ups {
		remoteURL := u.Reg.URL()
		if u.URL != "" {
			remoteURL = u.URL
		}
		uc := config.Upstream{
			Name:        u.Name,
			Listen:      "127.0.0.1:0",
			Remote:      remoteURL,
			Storage:     config.UpstreamStorage{Path: filepath.Join(dir, u.Name)},
			CAFile:      u.Reg.CAFile(),
			Username:    u.Reg.opts.Username,
			Password:    config.Secret(u.Reg.opts.Password),
			Timeout:     time.Second,
			FillTimeout: time.Minute,
		}
		if u.Tweak != nil {
			u.Tweak(&uc)
		}
		cfg.Upstreams = append(cfg.Upstreams, uc)
	}
	return cfg
}

// StartProxy starts multiproxy for ups. It is shut down at test cleanup.
func StartProxy(t testing.TB, ups ...ProxyUpstream) *Proxy {
	t.Helper()
	return StartProxyConfig(t, NewProxyConfig(t, ups...))
}

// StartProxyConfig starts multiproxy with cfg, logging into a buffer the
// test can read with Logs.
func StartProxyConfig(t testing.TB, cfg config.Config) *Proxy {
	t.Helper()
	p := &Proxy{t: t, Config: cfg, logs: &SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	proc, err := serve.Start(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("testsupport: start multiproxy: %v", err)
	}
	p.Process = proc
	t.Cleanup(p.Stop)
	return p
}

// Stop drains and shuts the proxy down; idempotent.
func (p *Proxy) Stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Process.Shutdown(ctx); err != nil {
		p.t.Errorf("testsupport: shut down multiproxy: %v", err)
	}
}

// Addr is the bound address of an upstream's listener.
func (p *Proxy) Addr(upstream string) string { return p.Process.Addr(upstream) }

// URL is the base URL of an upstream's listener.
func (p *Proxy) URL(upstream string) string { return "http://" + p.Addr(upstream) }

// AdminURL is the admin listener's base URL.
func (p *Proxy) AdminURL() string { return "http://" + p.Process.AdminAddr() }

// Ref names repoAndRef ("repo:tag" or "repo@sha256:...") on an upstream's port.
func (p *Proxy) Ref(t testing.TB, upstream, repoAndRef string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(p.Addr(upstream)+"/"+repoAndRef, name.Insecure)
	if err != nil {
		t.Fatalf("testsupport: parse %s: %v", repoAndRef, err)
	}
	return ref
}

// Logs is everything the proxy logged so far.
func (p *Proxy) Logs() string { return p.logs.String() }

// PullOptions are ggcr options for pulling through the proxy: a plain client
// with no credentials (the proxy holds those) and a bounded wait.
func PullOptions() []remote.Option {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: 30 * time.Second}
	return []remote.Option{remote.WithTransport(tr)}
}

// SyncBuffer is a bytes.Buffer that a server may write its log to while
// the test reads it.
type SyncBuffer = testinfra.SyncBuffer

// Settle waits until no blob download is running in the proxy, as its
// multiproxy_fills_in_flight gauge reports. Clients get a blob's last byte
// before the fill is committed, so a test that pulls again "warm" or looks
// at the store must wait for this event first.
func (p *Proxy) Settle(t testing.TB) {
	t.Helper()
	WaitFor(t, 30*time.Second, "no fill in flight", func() bool {
		n, _ := Scrape(t, p.AdminURL()).Value("multiproxy_fills_in_flight", nil)
		return n == 0
	})
}

// Metric is the value of a metric on the proxy's /metrics (see
// Metrics.Value), 0 if no series matches.
func (p *Proxy) Metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return Metric(t, p.AdminURL(), name, labels)
}
