package coord

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// keyPins is the lease an upstream's pins file is changed under.
func keyPins(upstream string) string { return prefix + "pins:" + upstream }

// pinsPoll is how often LockPins asks again while another replica holds
// the lease: a pin change holds it for a read and a write of a small
// file, so the wait is short and a long poll would be most of it.
const pinsPoll = 50 * time.Millisecond

// ErrPinsBusy is why LockPins gave up: another replica held the pins
// lease for longer than a pin change takes (2 TTLs).
var ErrPinsBusy = errors.New("another replica held the pins lock too long")

// LockPins waits until this replica holds upstream's pins lease, the one
// lease every replica changes the shared pins file under: without it two
// replicas that pin at once each read the file, add their pin and write
// it, and the last writer drops the other's pin. It waits at most 2 TTLs
// (a dead holder's lease expires within one) or until ctx ends, and fails
// at once with ErrUnavailable while Redis does not answer: a pin change
// is refused then, never made without the lease.
func (c *Coordinator) LockPins(ctx context.Context, upstream string) (*Lease, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, 2*c.ttl, ErrPinsBusy)
	defer cancel()
	for {
		l, holder, err := c.acquire(ctx, keyPins(upstream))
		if err != nil {
			return nil, fmt.Errorf("pins lock of %s: %w", upstream, err)
		}
		if l != nil {
			return l, nil
		}
		// Jittered, so that replicas waiting together do not ask in
		// lockstep.
		wait := pinsPoll/2 + rand.N(pinsPoll)
		select {
		case <-ctx.Done():
			owner, _, _ := strings.Cut(holder, "|")
			return nil, fmt.Errorf("pins lock of %s (held by %q): %w", upstream, owner, context.Cause(ctx))
		case <-time.After(wait):
		}
	}
}
