//go:build !unix

package sdnotify

import "errors"

// monotonicUsec has no CLOCK_MONOTONIC to read where systemd cannot run.
func monotonicUsec() (uint64, error) {
	return 0, errors.New("CLOCK_MONOTONIC is not available on this platform")
}
