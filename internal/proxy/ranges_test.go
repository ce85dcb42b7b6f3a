//go:build unix

package proxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/proxy"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// rangeAnswer is what a client can tell of a ranged answer.
type rangeAnswer struct {
	status                            int
	contentRange, contentLength, body string // body as its sha256
	n                                 int64  // body bytes received
}

func getRange(t *testing.T, url string, header map[string]string) rangeAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return rangeAnswer{resp.StatusCode, resp.Header.Get("Content-Range"), resp.Header.Get("Content-Length"),
		hex.EncodeToString(h.Sum(nil))[:16], n}
}

// A ranged GET of a blob not cached yet is answered as the upstream answers
// it, 206 with exactly the range (or 416, or the whole body when If-Range
// names another entity), never the whole body for a part of it, whether the
// fill spools or passes through; and the blob is cached by it when it can
// be. Every request is the first for its blob.
func TestColdRangesAnswerAsTheUpstream(t *testing.T) {
	const size = 6 << 20
	cases := []map[string]string{
		{"Range": "bytes=0-99"},                              // a part: held until verified
		{"Range": "bytes=1048576-"},                          // containerd resuming: streamed
		{"Range": "bytes=-5"},                                // a suffix
		{"Range": "bytes=100-99999999"},                      // past the end: to the end
		{"Range": fmt.Sprintf("bytes=%d-", size)},            // nothing left: 416
		{"Range": "bytes=0-9,20-29"},                         // several: multipart
		{"Range": "bytes=0-99", "If-Range": `"sha256:0000"`}, // another entity: all
		{"Range": "bytes=0-99", "If-Range": "this blob"},     // this one: the range
		// Several, all past the end: 416, known from the size alone.
		{"Range": fmt.Sprintf("bytes=%d-,%d-", size, size+10)},
		// A suffix of an empty blob: a range of no bytes (206, as
		// ServeContent answers it), nothing to wait for.
		{"Range": "bytes=-5", "size": "0"},
	}
	for _, mode := range []struct {
		name  string
		space *disk.Space
	}{
		{"spool", nil},
		{"pass-through", disk.NewWith("/", func(string) (disk.Usage, error) {
			return disk.Usage{Total: 1 << 40, Free: 0}, nil // full: nothing is stored
		})},
	} {
		t.Run(mode.name, func(t *testing.T) {
			f := ts.NewFaults()
			up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
			cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
			u := cfg.Upstreams[0]
			u.Timeout = 30 * time.Second // a slow CI machine is not an outage
			s, err := proxy.New(context.Background(), u, proxy.Options{Drain: time.Second, Space: mode.space})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			hs := httptest.NewServer(s)
			t.Cleanup(hs.Close)

			for i, hdr := range cases {
				repo := fmt.Sprintf("library/r%d", i)
				n := size
				if hdr["size"] != "" {
					n, _ = strconv.Atoi(hdr["size"])
					hdr = map[string]string{"Range": hdr["Range"]}
				}
				layer := pushRawLayer(t, up, repo, n)
				if hdr["If-Range"] == "this blob" {
					hdr = map[string]string{"Range": hdr["Range"], "If-Range": `"` + layer + `"`}
				}
				path := "/v2/" + repo + "/blobs/" + layer
				want := getRange(t, up.URL()+path, hdr)
				f.ResetCounts()
				got := getRange(t, hs.URL+path, hdr)
				if mode.name == "pass-through" && got.status == http.StatusServiceUnavailable && hdr["Range"] == "bytes=0-9,20-29" {
					// Several ranges of a blob that could not be stored:
					// the bytes are gone; the client retries.
					continue
				}
				if hdr["Range"] == "bytes=0-9,20-29" {
					// Each multipart answer has a boundary of its own.
					got.body, want.body = "", ""
				}
				if got.status != want.status || got.contentRange != want.contentRange ||
					got.contentLength != want.contentLength || got.body != want.body {
					t.Errorf("%v: cache answered %+v, upstream %+v", hdr, got, want)
				}
				if n := f.Count("GET", layer); n != 1 {
					t.Errorf("%v: %d upstream GETs of the blob, want 1", hdr, n)
				}
			}
		})
	}
}

// The figure: a 100-byte range of a cold blob sends 100 bytes, not
// the blob, and the blob is cached by it: the same range again is served
// from the store without asking the upstream.
func TestColdSmallRangeSendsOnlyTheRange(t *testing.T) {
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	layer := pushRawLayer(t, up, "library/big", 100<<20)
	p := ts.StartProxy(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	url := p.URL("docker.io") + "/v2/library/big/blobs/" + layer
	for pass := range 2 {
		got := getRange(t, url, map[string]string{"Range": "bytes=1000-1099"})
		if got.status != http.StatusPartialContent || got.n != 100 || got.contentRange != fmt.Sprintf("bytes 1000-1099/%d", 100<<20) {
			t.Errorf("pass %d: got %+v, want 206 with 100 bytes", pass, got)
		}
	}
	if n := f.Count("GET", layer); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1: the first range caches it", n)
	}
}
