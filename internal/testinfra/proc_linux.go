package testinfra

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel SIGKILL cmd when the program that
// started it dies: a test that times out or panics skips its cleanups, a
// harness killed -9 its deferred stops, and a gateway or redis-server left
// behind would hold its port and directory after the run.
func killWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
