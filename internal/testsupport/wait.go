package testsupport

import (
	"testing"
	"time"
)

// WaitFor polls cond until it holds, failing the test with what when it
// does not within d. Tests wait for events this way (a fill committed after
// its client got the last byte, a recycle done) instead of sleeping for a
// guessed time: d only bounds a failure, it never paces a pass.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
