package testenv

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill a server if the test binary dies without running its
// cleanups (a -timeout panic), so no registry or containerd outlives the run.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
