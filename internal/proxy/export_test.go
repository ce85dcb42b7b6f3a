package proxy

import (
	"testing"
	"time"
)

// SetStallTimeout shortens how long a client may stall a blob, until the
// test ends, so that tests of a dropped client need not wait 30 s. Call it
// before starting the server.
func SetStallTimeout(t testing.TB, d time.Duration) {
	old := stallTimeout
	stallTimeout = d
	t.Cleanup(func() { stallTimeout = old })
}
