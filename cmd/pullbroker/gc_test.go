package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
)

// TestGCCommand: pullbroker gc keeps what a tag record and a locked rule's
// lock file reach, through their manifests, and an unreferenced blob
// younger than storage.gc.grace; --dry-run lists the old unreferenced blob
// and removes nothing; without it, the blob goes.
func TestGCCommand(t *testing.T) {
	root := t.TempDir()
	lockFile := filepath.Join(t.TempDir(), "images.lock")
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	cfgYAML := fmt.Sprintf("storage: {driver: filesystem, parameters: {rootdirectory: %q}, gc: {grace: 1h}}\n"+
		"pins: [{registry: docker.io, repository: library/locked, policy: locked, lockFile: %q}]\n", root, lockFile)
	if err := os.WriteFile(cfgFile, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, root)
	store, put, file := c.store, c.put, c.file
	// image stores a manifest of one config and one layer under repo.
	image := func(repo, name string) (manifest digest.Digest, blobs []digest.Digest) {
		cfg, layer := put(name+" config"), put(name+" layer")
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
			cfg, len(name+" config"), layer, len(name+" layer")))
		m := cache.Manifest{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
		if err := store.PutManifest(t.Context(), "docker.io", repo, m); err != nil {
			t.Fatal(err)
		}
		return m.Digest, []digest.Digest{m.Digest, cfg, layer}
	}
	tagged, taggedBlobs := image("library/tagged", "tagged")
	if err := store.PutTag(t.Context(), "docker.io", "library/tagged", "v1", cache.Tag{Digest: tagged, MediaType: "application/vnd.oci.image.manifest.v1+json"}); err != nil {
		t.Fatal(err)
	}
	locked, lockedBlobs := image("library/locked", "locked")
	if err := os.WriteFile(lockFile, []byte("pins:\n  docker.io/library/locked:v1: "+locked.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, untagged := image("library/untagged", "untagged")
	old := time.Now().Add(-2 * time.Hour)
	for _, d := range append(append(append([]digest.Digest{}, taggedBlobs...), lockedBlobs...), untagged...) {
		if err := os.Chtimes(file(d), old, old); err != nil {
			t.Fatal(err)
		}
	}
	young := put("young unreferenced blob")
	exists := func(d digest.Digest) bool {
		_, err := os.Stat(file(d))
		return err == nil
	}

	out, _, err := runCmd(t, "", "gc", "--dry-run", "--config", cfgFile)
	if err != nil {
		t.Fatalf("gc --dry-run: %v", err)
	}
	for _, d := range untagged {
		if !strings.Contains(out, "would remove "+d.String()) || !exists(d) {
			t.Errorf("gc --dry-run on %s (still stored: %v):\n%s", d, exists(d), out)
		}
	}
	if !strings.Contains(out, "would remove 3 unreferenced blobs") {
		t.Errorf("gc --dry-run summary:\n%s", out)
	}

	out, _, err = runCmd(t, "", "gc", "--config", cfgFile)
	if err != nil {
		t.Fatalf("gc: %v", err)
	}
	if !strings.Contains(out, "removed 3 unreferenced blobs") || !strings.Contains(out, "1 unreferenced kept for being younger") {
		t.Errorf("gc output:\n%s", out)
	}
	for _, d := range untagged {
		if exists(d) {
			t.Errorf("unreferenced old blob %s still stored", d)
		}
	}
	for _, d := range append(append([]digest.Digest{young}, taggedBlobs...), lockedBlobs...) {
		if !exists(d) {
			t.Errorf("blob %s removed", d)
		}
	}
}
