//go:build !linux

package testsupport

import "os/exec"

// killWithParent has no portable equivalent of Linux's parent-death
// signal: elsewhere a server outlives a test binary that dies before its
// cleanups run.
func killWithParent(*exec.Cmd) {}
