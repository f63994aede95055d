//go:build !linux

package testenv

import "testing"

// MountTmpfs needs Linux; elsewhere the test skips.
func MountTmpfs(t testing.TB, size string) string {
	t.Skip("a tmpfs mount needs Linux")
	return ""
}

// FillDisk needs Linux; elsewhere the test skips.
func FillDisk(t testing.TB, dir string, leave int64) string {
	t.Skip("filling a disk needs Linux")
	return ""
}
