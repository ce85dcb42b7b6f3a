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
	WaitUntil(t, d, what, func() (bool, string) { return cond(), "" })
}

// WaitUntil is WaitFor for a condition that says what it saw, which the
// failure reports ("last saw ..."). It returns how long the wait took, for
// the test's log: a duration that passes or fails a test races the clock.
func WaitUntil(t testing.TB, d time.Duration, what string, cond func() (ok bool, saw string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, saw := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > d {
			if saw != "" {
				t.Fatalf("%s: not within %v; last saw %s", what, d, saw)
			}
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
