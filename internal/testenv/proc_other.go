//go:build !linux

package testenv

import "os/exec"

// killWithParent has no portable equivalent; the tests run on Linux.
func killWithParent(*exec.Cmd) {}
