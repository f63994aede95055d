package testenv

import (
	"os"
	"syscall"
	"testing"
)

// MountTmpfs mounts a tmpfs of the given size ("16m", optionally followed by more tmpfs options:
// "16m,nr_inodes=8") on a fresh directory and returns it; the mount goes at cleanup. A small one
// is a disk that fills up. It needs root: without it the test skips, or fails when every tool is
// required.
func MountTmpfs(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		msg := "mounting a tmpfs needs root: " + err.Error()
		if os.Getenv(RequireToolsEnv) != "" {
			t.Fatalf("%s [%s is set, so this fails instead of skipping]", msg, RequireToolsEnv)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// FillDisk grows the file dir/filler until the filesystem holding dir has at most leave bytes
// free, and returns the file's path: remove it to give the space back.
func FillDisk(t testing.TB, dir string, leave int64) string {
	t.Helper()
	p := dir + "/filler"
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Bavail)*st.Bsize <= leave {
			return p
		}
		if _, err := f.Write(chunk); err != nil {
			return p
		}
	}
}
