package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyCommand: pullbroker verify re-hashes the cache named by the
// config, removes a corrupt blob, keeps the good one and exits non-zero.
func TestVerifyCommand(t *testing.T) {
	root := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("storage: {driver: filesystem, parameters: {rootdirectory: %q}}\n", root)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, root)
	put, file := c.put, c.file
	good := put("good blob")
	bad := put("blob to be corrupted")
	if err := os.WriteFile(file(bad), []byte("blob to be corrupteD"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, _, err := runCmd(t, "", "verify", "--config", cfgFile)
	if err == nil || !strings.Contains(err.Error(), "1 corrupt blobs were removed") {
		t.Fatalf("verify error = %v, want one naming the corrupt blob count", err)
	}
	if !strings.Contains(out, "removed corrupt blob "+bad.String()) || !strings.Contains(out, "verified 2 blobs") {
		t.Errorf("verify output:\n%s", out)
	}
	if _, err := os.Stat(file(bad)); !os.IsNotExist(err) {
		t.Errorf("corrupt blob still there: %v", err)
	}
	if _, err := os.Stat(file(good)); err != nil {
		t.Errorf("good blob removed: %v", err)
	}
	if _, _, err := runCmd(t, "", "verify", "--config", cfgFile); err != nil {
		t.Errorf("second verify of a clean cache: %v", err)
	}
}
