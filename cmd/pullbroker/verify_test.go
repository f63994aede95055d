package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
)

// TestVerifyCommand: pullbroker verify re-hashes the cache named by the
// config, removes a corrupt blob, keeps the good one and exits non-zero.
func TestVerifyCommand(t *testing.T) {
	root := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("storage: {driver: filesystem, parameters: {rootdirectory: %q}}\n", root)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	driver, localRoot, err := cache.OpenDriver(t.Context(), cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(driver, cache.Options{LocalRoot: localRoot})
	if err != nil {
		t.Fatal(err)
	}
	put := func(content []byte) digest.Digest {
		d := digest.FromBytes(content)
		f, _, err := store.Fill(d, int64(len(content)), func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Done(t.Context()); err != nil {
			t.Fatal(err)
		}
		return d
	}
	good := put([]byte("good blob"))
	bad := put([]byte("blob to be corrupted"))
	file := func(d digest.Digest) string {
		return filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")
	}
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
