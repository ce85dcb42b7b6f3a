package testsupport

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel SIGKILL cmd when the test binary dies:
// a test that times out or panics skips its cleanups, and a gateway or
// redis-server left behind would hold its port and temp directory after
// the run.
func killWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
