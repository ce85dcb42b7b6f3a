package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// newClient is a fresh connection pool per system under test, never using a
// proxy from the environment.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// drain reads body to the end with a 1 MiB buffer (io.Discard's 8 KiB one
// would make the client the bottleneck), hashing it if h is non-nil.
func drain(body io.Reader, h io.Writer) (int64, error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	var n int64
	for {
		m, err := body.Read(buf)
		if m > 0 {
			n += int64(m)
			if h != nil {
				_, _ = h.Write(buf[:m])
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// get fetches url and reads the whole body. If verify is a digest
// ("sha256:..."), the body must hash to it.
func get(ctx context.Context, c *http.Client, method, url, accept, verify string) (int64, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, resp.Header, fmt.Errorf("%s %s: status %d: %s", method, url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var hh hash.Hash
	var w io.Writer // stays a nil interface without verification
	if verify != "" {
		hh = sha256.New()
		w = hh
	}
	n, err := drain(resp.Body, w)
	if err != nil {
		return n, resp.Header, fmt.Errorf("%s %s: read after %d bytes: %w", method, url, n, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength && method != http.MethodHead {
		return n, resp.Header, fmt.Errorf("%s %s: short body %d of %d", method, url, n, resp.ContentLength)
	}
	if verify != "" {
		if got := "sha256:" + hex.EncodeToString(hh.Sum(nil)); got != verify {
			return n, resp.Header, fmt.Errorf("%s %s: digest mismatch: got %s", method, url, got)
		}
	}
	return n, resp.Header, nil
}

func blobURL(base, repo, dgst string) string { return base + "/v2/" + repo + "/blobs/" + dgst }
func manifestURL(base, repo, ref string) string {
	return base + "/v2/" + repo + "/manifests/" + ref
}

// throughput runs conc clients, each fetching url perClient times, and
// returns MB/s (10^6 bytes) over the wall time and the bytes moved.
func throughput(ctx context.Context, c *http.Client, url string, size int64, conc, perClient int) (float64, int64, error) {
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for range conc {
		g.Go(func() error {
			for range perClient {
				n, _, err := get(gctx, c, http.MethodGet, url, "", "")
				if err != nil {
					return err
				}
				if n != size {
					return fmt.Errorf("got %d bytes, want %d", n, size)
				}
				total.Add(n)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, total.Load(), err
	}
	el := time.Since(start).Seconds()
	return float64(total.Load()) / el / 1e6, total.Load(), nil
}

// latency runs conc workers, each making perWorker requests built by mk(i),
// and returns p50 and p99 in milliseconds.
func latency(ctx context.Context, c *http.Client, conc, perWorker int, mk func(i int) (method, url string)) (p50, p99 float64, err error) {
	lat := make([][]float64, conc)
	g, gctx := errgroup.WithContext(ctx)
	for w := range conc {
		g.Go(func() error {
			for k := range perWorker {
				method, url := mk(w*perWorker + k)
				t0 := time.Now()
				if _, _, err := get(gctx, c, method, url, manifestAccept, ""); err != nil {
					return err
				}
				lat[w] = append(lat[w], float64(time.Since(t0).Microseconds())/1000)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, 0, err
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return percentile(all, 0.50), percentile(all, 0.99), nil
}

// percentile of sorted xs (nearest rank).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(float64(len(xs))*p+0.5) - 1
	i = max(0, min(i, len(xs)-1))
	return xs[i]
}

// fanout makes n concurrent GETs of one blob, each verified, and returns
// the wall time until the last one completed.
func fanout(ctx context.Context, c *http.Client, url, dgst string, n int) (time.Duration, error) {
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for range n {
		g.Go(func() error {
			_, _, err := get(gctx, c, http.MethodGet, url, "", dgst)
			return err
		})
	}
	err := g.Wait()
	return time.Since(start), err
}

// pullImage pulls repo:tag the way containerd does: resolve the tag with
// HEAD, GET the manifest by digest, then the config and all layers in
// parallel, verifying every digest. It returns the time to the last byte.
func pullImage(ctx context.Context, c *http.Client, base, repo, tag string) (time.Duration, int64, error) {
	start := time.Now()
	_, h, err := get(ctx, c, http.MethodHead, manifestURL(base, repo, tag), manifestAccept, "")
	if err != nil {
		return 0, 0, fmt.Errorf("resolve: %w", err)
	}
	dgst := h.Get("Docker-Content-Digest")
	if dgst == "" {
		return 0, 0, errors.New("resolve: no Docker-Content-Digest")
	}
	body, err := getBody(ctx, c, manifestURL(base, repo, dgst), dgst)
	if err != nil {
		return 0, 0, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	blobs := append([]v1.Descriptor{m.Config}, m.Layers...)
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range blobs {
		g.Go(func() error {
			n, _, err := get(gctx, c, http.MethodGet, blobURL(base, repo, d.Digest.String()), "", d.Digest.String())
			total.Add(n)
			return err
		})
	}
	err = g.Wait()
	return time.Since(start), total.Load(), err
}

// getBody GETs a manifest and verifies its digest.
func getBody(ctx context.Context, c *http.Client, url, dgst string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); dgst != "" && got != dgst {
		return nil, fmt.Errorf("GET %s: digest mismatch", url)
	}
	return b, nil
}
