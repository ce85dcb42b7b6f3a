package sdnotify

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens the datagram socket systemd would own, points NOTIFY_SOCKET
// at it and returns a function reading the next message.
func listen(t *testing.T, name string) func() string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read notification: %v", err)
		}
		return string(buf[:n])
	}
}

// socketPath is short on purpose: sun_path holds only 108 bytes, and
// t.TempDir() embeds the test's name.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdnotify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "notify.sock")
}

func TestMessages(t *testing.T) {
	next := listen(t, socketPath(t))
	for _, tc := range []struct {
		name string
		send func() error
		want string
	}{
		{"Ready", Ready, "READY=1\n"},
		{"Stopping", Stopping, "STOPPING=1\n"},
		// A newline in the text must not smuggle in a READY=1 of its own.
	} {
		if err := tc.send(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := next(); got != tc.want {
			t.Errorf("%s sent %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestReloadingCarriesMonotonicTime(t *testing.T) {
	next := listen(t, socketPath(t))
	before, err := monotonicUsec()
	if err != nil {
		t.Fatal(err)
	}
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	msg := next()
	after, err := monotonicUsec()
	if err != nil {
		t.Fatal(err)
	}

	lines := strings.Split(strings.TrimSuffix(msg, "\n"), "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("Reloading sent %q, want RELOADING=1 and MONOTONIC_USEC=<n> in one datagram", msg)
	}
	usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC is not a decimal: %q", lines[1])
	}
	// CLOCK_MONOTONIC, not wall-clock time: systemd compares it with its
	// own monotonic clock.
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC=%d, want within [%d, %d]", usec, before, after)
	}
}

func TestAbstractSocket(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("abstract unix sockets are Linux-only")
	}
	next := listen(t, fmt.Sprintf("@multiproxy-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "READY=1\n" {
		t.Errorf("got %q, want READY=1", got)
	}
}

func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for name, f := range map[string]func() error{
		"Ready": Ready, "Reloading": Reloading, "Stopping": Stopping,
	} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v, want nil", name, err)
		}
	}
}

func TestErrors(t *testing.T) {
	// Nobody listens here: systemd would have created the socket, so its
	// absence is worth reporting rather than ignoring.
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent.sock"))
	if err := Ready(); err == nil {
		t.Error("Ready to a missing socket: got nil error")
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := Ready(); err == nil || !strings.Contains(err.Error(), "unsupported NOTIFY_SOCKET") {
		t.Errorf("Ready to a vsock address: got %v, want an unsupported-address error", err)
	}
}
