package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSyntheticCache: what writeSynthetic writes is a cache pullbroker could have written: every
// blob under its true digest, tag records resolving to a stored manifest whose config and layer are
// stored and linked; countBlobFiles counts what accounting will; removeTree leaves nothing.
func TestSyntheticCache(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	c, err := writeSynthetic(root, 300, 250)
	if err != nil {
		t.Fatal(err)
	}
	if c.repos != 3 || c.manifests != 3 || c.objects() != 303 {
		t.Fatalf("wrote %+v, want 3 repositories and manifests, 303 objects", c)
	}
	if n, err := countBlobFiles(root); err != nil || n != c.objects() {
		t.Fatalf("countBlobFiles = %d, %v; want %d", n, err, c.objects())
	}
	blob := func(d string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, blobFile("", strings.TrimPrefix(d, "sha256:"))))
		if err != nil {
			t.Fatalf("blob %s: %v", d, err)
		}
		if got := digestOf(b); got != d {
			t.Fatalf("blob stored under %s hashes to %s", d, got)
		}
		return b
	}
	repo := filepath.Join(root, "repos", syntheticRegistry, "bench", "scale-00002")
	tags, err := os.ReadDir(filepath.Join(repo, "_tags"))
	if err != nil || len(tags) != 50 {
		t.Fatalf("the last repository has %d tag records (%v), want 50", len(tags), err)
	}
	var record struct {
		Digest    string `json:"digest"`
		MediaType string `json:"mediaType"`
		Size      int    `json:"size"`
	}
	raw, err := os.ReadFile(filepath.Join(repo, "_tags", "t-249"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &record); err != nil {
		t.Fatal(err)
	}
	body := blob(record.Digest)
	if record.MediaType != ociManifest || record.Size != len(body) {
		t.Errorf("tag record %s, for a manifest of %d bytes", raw, len(body))
	}
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(m.Layers, m.Config, descriptor{Digest: record.Digest}) {
		if d.Size != 0 && len(blob(d.Digest)) != d.Size {
			t.Errorf("manifest gives %s %d bytes", d.Digest, d.Size)
		}
		if _, err := os.Stat(filepath.Join(repo, "_links", "sha256", strings.TrimPrefix(d.Digest, "sha256:"))); err != nil {
			t.Errorf("no link to %s: %v", d.Digest, err)
		}
	}

	if err := removeTree(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("after removeTree: %v", err)
	}
}
