package testinfra

import (
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PickAddr finds a free 127.0.0.1 port for a server that must keep its
// address across Stop/Start, or that is started later.
//
// The port is chosen outside the kernel's ephemeral range when that range
// is known: while a server is stopped nothing holds its port, and the
// kernel hands out ephemeral ports to every outgoing connection of this
// program (and of programs running alongside, such as other test binaries).
// A port below that
// range can only be taken by someone binding it explicitly, which makes
// Start after Stop far less likely to find it occupied.
func PickAddr() (string, error) {
	if lo, hi, ok := quietPortWindow(); ok {
		for range 64 {
			port := lo + rand.IntN(hi-lo+1)
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			ln, err := net.Listen("tcp4", addr)
			if err != nil {
				continue
			}
			if err := ln.Close(); err != nil {
				return "", err
			}
			return addr, nil
		}
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// quietPortWindow returns a port window that the kernel does not use for
// ephemeral ports. Only Linux exposes the range in a stable place; other
// systems fall back to port 0.
func quietPortWindow() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	ephLo, err1 := strconv.Atoi(f[0])
	ephHi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	// Stay clear of well-known and commonly configured service ports.
	const floor = 10000
	const minWindow = 1000
	switch {
	case ephLo-1-floor >= minWindow:
		return floor, ephLo - 1, true
	case 65535-(ephHi+1) >= minWindow:
		return ephHi + 1, 65535, true
	}
	return 0, 0, false
}

// listenRetry listens on addr, retrying briefly while the address is in
// use. Go already sets SO_REUSEADDR on listeners, so TIME_WAIT remnants of
// the previous incarnation do not block us; the retry covers the rarer case
// of a socket from the previous server still being torn down, or another
// process having bound the port for a moment.
func listenRetry(addr string) (net.Listener, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp4", addr)
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RandomHex is n random bytes in hex: passwords, secrets and nonces.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := crand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
