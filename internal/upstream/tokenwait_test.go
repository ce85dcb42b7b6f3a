package upstream_test

import (
	"context"
	"testing"
	"time"

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
