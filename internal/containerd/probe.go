package containerd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultProbeTimeout bounds one mirror probe. A cache that cannot answer
// /v2/ in 2 s will stall pulls too.
const DefaultProbeTimeout = 2 * time.Second

// probeMirrors asks each mirror in files for GET /v2/, concurrently, and
// reports the ones that do not answer 200 or 401 (a registry that wants a
// token still answers). Server entries are not probed: they are the
// fallback, and often out of the node's reach by design.
func probeMirrors(ctx context.Context, files map[string]*hostsFile, timeout time.Duration) []Finding {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	var (
		mu       sync.Mutex
		findings []Finding
		wg       sync.WaitGroup
	)
	for _, hf := range files {
		for _, m := range hf.mirrors {
			wg.Go(func() {
				if err := probe(ctx, m, timeout); err != nil {
					mu.Lock()
					defer mu.Unlock()
					findings = append(findings, Finding{Severity: Error, Code: CodeMirrorUnreachable, File: hf.path, Line: m.line, Text: hf.doc.text(m.line),
						Message: fmt.Sprintf("mirror %s does not answer GET /v2/: %v; containerd falls back to server at once only when the connection is refused, a mirror that times out stalls every pull", m.url, err),
						Fix:     "start the cache or correct the address; `multiproxy containerd hosts` writes the configured ports"})
				}
			})
		}
	}
	wg.Wait()
	for i := range findings {
		findings[i].Text = redactLine(findings[i].Text)
	}
	return findings
}

func probe(ctx context.Context, m mirrorEntry, timeout time.Duration) error {
	target, err := probeURL(m)
	if err != nil {
		return err
	}
	tr := &http.Transport{
		// As containerd does: a node behind a proxy reaches mirrors through it.
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: timeout,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: m.skipVerify}, //nolint:gosec // mirrors the hosts.toml skip_verify the user set
	}
	defer tr.CloseIdleConnections()
	if len(m.caFiles) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, f := range m.caFiles {
			pem, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("read its ca file: %w", err)
			}
			pool.AppendCertsFromPEM(pem)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return unwrapURLError(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// probeURL is where the registry API root of a mirror is. containerd
// appends /v2 to a host's path unless override_path is set; with it the
// path is an API root of its own that need not answer GET, so the probe
// asks the host's /v2/ instead.
func probeURL(m mirrorEntry) (string, error) {
	raw := m.url
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("invalid mirror URL: %w", err)
	}
	p := strings.TrimSuffix(u.Path, "/")
	switch {
	case m.overridePath || p == "":
		p = "/v2"
	case !strings.HasSuffix(p, "/v2"):
		p += "/v2"
	}
	u.Path, u.RawQuery = p+"/", ""
	return u.String(), nil
}

// unwrapURLError drops *url.Error's "Get <url>:" prefix; the finding
// already names the mirror.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		if ue.Timeout() {
			return fmt.Errorf("no answer within the timeout")
		}
		return ue.Err
	}
	return err
}
