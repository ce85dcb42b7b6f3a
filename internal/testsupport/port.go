package testsupport

import (
	"sync"
	"testing"

	"github.com/multiproxy/multiproxy/internal/testinfra"
)

// FreeAddr returns a 127.0.0.1 address nothing listens on right now, for a
// server a test starts later (a child process, a config file naming its
// listeners). Like a stopped Registry's, the port is outside the kernel's
// ephemeral range where that is known, so no outgoing connection takes it
// meanwhile, and no two calls in a test binary return the same address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 64 {
		addr, err := testinfra.PickAddr()
		if err != nil {
			t.Fatalf("testsupport: find a free port: %v", err)
		}
		handedOut.Lock()
		_, dup := handedOut.addrs[addr]
		if !dup {
			handedOut.addrs[addr] = struct{}{}
		}
		handedOut.Unlock()
		if !dup {
			return addr
		}
	}
	t.Fatal("testsupport: no free port found")
	return ""
}

// handedOut remembers FreeAddr's answers: a test may ask for several
// addresses before anything listens on them.
var handedOut = struct {
	sync.Mutex
	addrs map[string]struct{}
}{addrs: map[string]struct{}{}}
