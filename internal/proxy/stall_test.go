//go:build unix

package proxy_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/multiproxy/multiproxy/internal/disk"
	"github.com/multiproxy/multiproxy/internal/proxy"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// A client that stops reading mid-blob must not hold the others. On a
// pass-through fill, paced to its slowest client, it would hold every
// client of the fill until the fill timeout; on a spooled fill it would
// hold its handler and descriptor forever. It is dropped once it has made
// no progress for the stall timeout, and the other client of the same fill
// gets the whole blob.
func TestStalledClientIsDroppedAndTheOthersFinish(t *testing.T) {
	for _, mode := range []struct {
		name  string
		space *disk.Space // nil: space enough to spool
	}{
		{"pass-through", disk.NewWith("/", func(string) (disk.Usage, error) {
			return disk.Usage{Total: 1 << 40, Free: 0}, nil // full: nothing is stored
		})},
		{"spool", nil},
	} {
		t.Run(mode.name, func(t *testing.T) { stalledClientIsDropped(t, mode.space) })
	}
}

func stalledClientIsDropped(t *testing.T, space *disk.Space) {
	proxy.SetStallTimeout(t, 2*time.Second)
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	// Several pass-through windows (4 MiB) more than a stalled client's
	// socket buffers can absorb, so the fill must wait for it.
	const size = 24 << 20
	repo := "library/big"
	layer := pushRawLayer(t, up, repo, size)
	// Both clients attach while the upstream holds the body: a
	// pass-through fill can be joined only while it holds the first byte.
	release := make(chan struct{})
	var once sync.Once
	releaseUpstream := func() { once.Do(func() { close(release) }) }
	t.Cleanup(releaseUpstream)
	f.Add(ts.Rule{Method: http.MethodGet, PathContains: "/blobs/" + layer, Action: ts.HoldBody(1<<20, release)})

	cfg := ts.NewProxyConfig(t, ts.ProxyUpstream{Name: "docker.io", Reg: up})
	u := cfg.Upstreams[0]
	// Longer than any wait below: a client held by the stalled one would
	// hang rather than end with the fill's timeout.
	u.FillTimeout = 10 * time.Minute
	logs := &ts.SyncBuffer{}
	s, err := proxy.New(context.Background(), u, proxy.Options{
		Drain:  time.Second,
		Space:  space,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	url := hs.URL + "/v2/" + repo + "/blobs/" + layer

	stalled := startStalledClient(t, hs.Listener.Addr().String(), "/v2/"+repo+"/blobs/"+layer, 64<<10)
	firstByte := make(chan struct{})
	result := make(chan blobResult, 1)
	go func() { result <- fetchBlob(url, func() { close(firstByte) }) }()
	select {
	case <-firstByte:
	case r := <-result:
		t.Fatalf("the second client ended before the upstream sent the blob: %v", r.err)
	case <-time.After(time.Minute):
		t.Fatal("the second client got no byte while the upstream held the body")
	}
	if n := f.Count(http.MethodGet, "/blobs/"+layer); n != 1 {
		t.Fatalf("%d upstream GETs, want 1: the second client must share the stalled one's fill", n)
	}
	releaseUpstream()

	select {
	case r := <-result:
		if r.err != nil || r.digest != layer {
			t.Fatalf("the client reading on got %s (%v), want %s", r.digest, r.err, layer)
		}
	case <-time.After(time.Minute):
		t.Fatal("the client reading on never got the whole blob: the stalled client holds it")
	}
	// On a spooled fill the other client does not wait for the stalled
	// one: its end says nothing about the drop, which the operator's log
	// line announces. Reading before it would be progress.
	ts.WaitFor(t, time.Minute, "the stalled client dropped", func() bool {
		return strings.Contains(logs.String(), "client stopped reading a blob; dropped")
	})
	got, err := stalled.drain()
	if err != nil {
		t.Fatalf("the stalled client's connection after %d bytes: %v; want it closed by the proxy", got, err)
	}
	if got >= size {
		t.Fatalf("the stalled client got %d bytes, the whole blob: it was never stalled", got)
	}
	t.Logf("the stalled client's connection closed after %d of %d bytes", got, size)
	ts.WaitFor(t, 30*time.Second, "no fill in flight", func() bool { return s.Cache().FillsInFlight() == 0 })
	stored := blobFileExists(u.Storage.Path, layer)
	if space == nil && !stored {
		t.Error("the spooled fill was not stored: dropping a stalled client must not end the fill")
	}
	if space != nil && stored {
		t.Error("a blob was stored with no space for it")
	}
}

// stalledClient is a raw HTTP client that reads the start of a response,
// then stops reading with a small receive buffer, as a client whose
// process hangs would.
type stalledClient struct {
	conn net.Conn
	br   *bufio.Reader
	read int64 // body bytes, headers excluded
}

// startStalledClient GETs path and reads the headers and body bytes of
// the answer, then stops reading. It fails the test on a status other than 200.
func startStalledClient(t *testing.T, addr, path string, body int64) *stalledClient {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		t.Fatal(err)
	}
	// A hang, not a measure: the proxy answers as soon as the upstream has.
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	c := &stalledClient{conn: conn, br: bufio.NewReaderSize(conn, 4<<10)}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("stalled client: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stalled client: status %d", resp.StatusCode)
	}
	n, err := io.CopyN(io.Discard, resp.Body, body)
	if err != nil {
		t.Fatalf("stalled client: read %d bytes: %v", n, err)
	}
	c.read = n
	return c
}

// drain reads what is left in the client's buffers, and returns the body
// bytes it got in all. An error means the connection did not end with a
// close by the proxy within a minute.
func (c *stalledClient) drain() (int64, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Minute))
	n, err := io.Copy(io.Discard, c.br)
	// The headers were consumed from br already: n is body bytes (with
	// the chunk framing, if any; the blob has a length, so none).
	total := c.read + n
	if err == nil || errors.Is(err, syscall.ECONNRESET) {
		return total, nil
	}
	return total, err
}

// pushRawLayer pushes size random bytes as a blob of repo and returns its
// digest: no tar or gzip, which under the race detector would cost seconds
// for a size that matters here.
func pushRawLayer(t *testing.T, up *ts.Registry, repo string, size int) string {
	t.Helper()
	b := make([]byte, size)
	_, _ = rand.Read(b)
	l := static.NewLayer(b, types.OCIUncompressedLayer)
	r, err := name.NewRepository(up.Ref(repo))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, l, up.RemoteOptions()...); err != nil {
		t.Fatal(err)
	}
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// blobFileExists reports whether a blob's bytes are in the store at root.
func blobFileExists(root, d string) bool {
	hexd := strings.TrimPrefix(d, "sha256:")
	_, err := os.Stat(filepath.Join(root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data"))
	return err == nil
}
