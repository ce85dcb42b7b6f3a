//go:build !linux

package testinfra

import "os/exec"

// killWithParent has no portable equivalent of Linux's parent-death
// signal: elsewhere a server outlives a program that dies before its
// cleanups run.
func killWithParent(*exec.Cmd) {}
