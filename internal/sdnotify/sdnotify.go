// Package sdnotify tells systemd about the service's state with the
// sd_notify protocol, so a Type=notify unit is "active" only once multiproxy
// really serves, and `systemctl status` shows reloads and the drain.
//
// The protocol (sd_notify(3), "The Notification Protocol" in the systemd
// docs) is one datagram of newline-separated VAR=VALUE assignments, sent to
// the AF_UNIX SOCK_DGRAM socket named by $NOTIFY_SOCKET. A name starting with
// '@' is in Linux's abstract namespace. It is small enough to implement here
// rather than take on a dependency for it.
//
// Outside systemd (a container, a terminal, tests) NOTIFY_SOCKET is unset and
// every function is a no-op that returns nil, so callers never need to check
// how they were started.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ready reports that start-up is complete: for multiproxy, that every
// listener is bound. A reload is also finished by sending Ready.
func Ready() error { return notify("READY=1") }

// Reloading reports that a configuration reload has begun; the service is
// "reloading" until the next Ready. systemd pairs RELOADING=1 with
// MONOTONIC_USEC so it can tell this reload cycle from an earlier one, and
// requires it for Type=notify-reload.
func Reloading() error {
	usec, err := monotonicUsec()
	if err != nil {
		return fmt.Errorf("sdnotify: read CLOCK_MONOTONIC: %w", err)
	}
	return notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(usec, 10))
}

// Stopping reports that shutdown has begun, so systemd shows "deactivating"
// for the drain instead of a running service that no longer accepts.
func Stopping() error { return notify("STOPPING=1") }

// notify sends the given VAR=VALUE assignments in one datagram. It returns
// nil without doing anything when NOTIFY_SOCKET is unset.
func notify(assignments ...string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	switch {
	case strings.HasPrefix(addr, "/"):
	case strings.HasPrefix(addr, "@"):
		// Go maps a leading '@' to the abstract namespace's NUL byte itself.
	default:
		// systemd 253+ also knows vsock: addresses, with which a VM's
		// systemd notifies its host; services are given a unix socket.
		return fmt.Errorf("sdnotify: unsupported NOTIFY_SOCKET %q: want an absolute path or @abstract name", addr)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	msg := strings.Join(assignments, "\n") + "\n"
	// A datagram is sent whole or not at all, so there is no short write
	// to handle.
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", addr, err)
	}
	return nil
}
