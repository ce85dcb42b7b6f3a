package ha

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiproxy/multiproxy/internal/admin"
	ts "github.com/multiproxy/multiproxy/internal/testsupport"
)

// pinsRead is how long the bucket takes to answer a read of the pins
// file: long enough that replicas pinning at once all read it before any
// writes it back, which is when a change made without the cluster's lock
// is lost.
const pinsRead = 150 * time.Millisecond

// TestPinsAddedAtOnceThroughEveryReplicaAreAllKept: operators pinning
// twelve images at once, spread over three replicas' admin APIs, get
// twelve pins that every replica lists, though each pin is a
// read-modify-write of one file in the shared bucket. Without Redis a pin
// change is refused with a 503 saying why, and nothing changes.
func TestPinsAddedAtOnceThroughEveryReplicaAreAllKept(t *testing.T) {
	up := tokenCDN(t)
	const images = 12
	var refs []string
	for i := range images {
		ref := fmt.Sprintf("team/pin%02d:v1", i)
		up.Push(t, ref, 1, 4<<10)
		refs = append(refs, ref)
	}
	var gate *ts.S3Gate
	c := startCluster(t, up, 3, options{
		// Twelve changes one after the other, each waiting on the slow
		// read, fit well within the lock's wait of two TTLs.
		leaseTTL: "10s",
		s3Endpoint: func(_ int, gateway string) string {
			if gate == nil {
				gate = ts.StartS3GateAt(t, gateway, ts.S3GateOptions{})
			}
			return gate.URL
		}})
	gate.After(func(call ts.S3Call) bool {
		return call.Op == "GetObject" && strings.HasSuffix(call.Key, "/pins.json")
	}, func(ts.S3Call) { time.Sleep(pinsRead) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, images)
	var wg sync.WaitGroup
	for i, ref := range refs {
		r := c.replicas[i%len(c.replicas)]
		wg.Go(func() {
			if _, err := (admin.Client{Base: r.adminURL()}).AddPin(ctx, upstreamName, ref); err != nil {
				errs <- fmt.Errorf("pin %s through replica %d: %w", ref, r.i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, r := range c.replicas {
		if missing := missingPins(ctx, t, r, refs); len(missing) > 0 {
			t.Errorf("replica %d lists %d of the %d pins added: %v are gone", r.i, images-len(missing), images, missing)
		}
	}

	// Without Redis no replica may change the file: another could be
	// changing it too, unseen.
	c.redis.Stop(t)
	r := c.replicas[1]
	ts.WaitUntil(t, 10*time.Second, "replica sees Redis down", func() (bool, string) {
		v := r.metric(t, "multiproxy_coordination_up", nil)
		return v == 0, fmt.Sprint(v)
	})
	extra := "team/pin-late:v1"
	up.Push(t, extra, 1, 4<<10)
	cl := admin.Client{Base: r.adminURL()}
	_, err := cl.AddPin(ctx, upstreamName, extra)
	wantRefused(t, "pin add without Redis", err)
	wantRefused(t, "pin rm without Redis", cl.RemovePin(ctx, upstreamName, refs[0]))
	if missing := missingPins(ctx, t, r, refs); len(missing) > 0 {
		t.Errorf("without Redis, pins %v are gone", missing)
	}
	if missing := missingPins(ctx, t, r, []string{extra}); len(missing) == 0 {
		t.Errorf("without Redis, %s was pinned anyway", extra)
	}
}

// missingPins is which of refs r's pins API does not list.
func missingPins(ctx context.Context, t *testing.T, r *replica, refs []string) []string {
	t.Helper()
	ans, err := (admin.Client{Base: r.adminURL()}).Pins(ctx, upstreamName)
	if err != nil {
		t.Fatalf("replica %d: list pins: %v", r.i, err)
	}
	var listed []string
	for _, u := range ans.Upstreams {
		for _, p := range u.Pins {
			listed = append(listed, p.Ref)
		}
	}
	var missing []string
	for _, ref := range refs {
		if !slices.Contains(listed, ref) {
			missing = append(missing, ref)
		}
	}
	return missing
}

// wantRefused checks a pin change was refused as unavailable, with a
// message (what `multiproxy pin` prints) that says why.
func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	var ae *admin.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "pins lock") {
		t.Errorf("%s: %v; want a 503 saying the pins lock is unavailable", what, err)
	}
}
