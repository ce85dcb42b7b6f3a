package upstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	ts "github.com/multiproxy/multiproxy/internal/testsupport"
	"github.com/multiproxy/multiproxy/internal/upstream"
)

// A caller waits for a token no longer than its own deadline: the token
// fetch is shared and detached, with a bound of its own (the upstream
// timeout), so a request that starts it late in its bound, or whose
// deadline is shorter, would otherwise wait for the fetch's bound rather
// than its own, past the 2x timeout a client is promised.
func TestTokenWaitEndsAtTheCallersDeadline(t *testing.T) {
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Token: true, WrapTokens: f.Wrap})
	img := ts.PushImage(t, up, "team/app:v1", 1, 1024)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	// The token issuer sends its headers and one byte, then nothing.
	f.Add(ts.Rule{Action: ts.HoldBody(1, release)})
	c, _ := client(t, up.URL(), upstream.Options{Timeout: 5 * time.Second})

	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, _, err := c.GetManifest(ctx, "team/app", ts.Digest(t, img))
	took := time.Since(start)
	if err == nil {
		t.Fatal("a manifest behind a token that never arrives was fetched")
	}
	if took > deadline+time.Second {
		t.Errorf("GetManifest returned after %v (%v), want within the caller's %v deadline, not the fetch's 5 s", took.Round(time.Millisecond), err, deadline)
	}
	if got := causeOf(t, err); got != upstream.CauseTimeout {
		t.Errorf("cause %s (%v), want %s", got, err, upstream.CauseTimeout)
	}
}

// A blob's error answer whose body never arrives whole fails within the
// upstream timeout: its status came in time, and the snippet read from it
// for the error must not hold the fill, and every client of it, for as
// long as the upstream drips.
func TestBlobErrorBodyHasADeadline(t *testing.T) {
	f := ts.NewFaults()
	up := ts.StartRegistry(t, ts.RegistryOptions{Wrap: f.Wrap})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	// distribution's 404 for an unknown blob: its headers and one byte.
	f.Add(ts.Rule{Method: "GET", PathContains: "/blobs/", Action: ts.HoldBody(1, release)})
	const timeout = time.Second
	c, _ := client(t, up.URL(), upstream.Options{Timeout: timeout})

	start := time.Now()
	done := make(chan error, 1)
	go func() {
		resp, err := c.GetBlob(context.Background(), "team/app", digest.FromString("never pushed"))
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * timeout):
		t.Fatalf("GetBlob still waiting after %v, the upstream timeout being %v", 10*timeout, timeout)
	}
	took := time.Since(start)
	if err == nil {
		t.Fatal("an unknown blob was read")
	}
	if took > timeout+time.Second {
		t.Errorf("GetBlob returned after %v (%v), want within the %v upstream timeout", took.Round(time.Millisecond), err, timeout)
	}
	if upstream.IsNotFound(err) {
		t.Errorf("a 404 cut short was taken for an authoritative absence: %v", err)
	}
}
