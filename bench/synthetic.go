package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// A synthetic cache for measurement (8): many blobs and tag records
// written straight into storage in pullbroker's layout (cache/store.go),
// as a cache that pulled a great many images holds them. The same files
// serve the filesystem driver (its root) and S3 (a bucket's folder in
// versitygw's posix backend, whose objects are files at their keys and
// need no metadata of their own).
//
// Every blob is real content under its true digest: a short line made of
// its index. Each repository has one manifest (an OCI image manifest of
// two of those blobs, stored like any blob), links to the three, and its
// share of the tag records, all resolving to that manifest.

// syntheticRegistry is the upstream the synthetic repositories belong to:
// the one pullbrokerConfig configures.
const syntheticRegistry = "upstream.bench"

// tagsPerRepo is how many tag records each synthetic repository has.
const tagsPerRepo = 100

// syntheticCache is what writeSynthetic wrote.
type syntheticCache struct {
	blobs, manifests, repos, tags int
}

// objects is what pullbroker's accounting counts: everything under blobs/.
func (c syntheticCache) objects() int { return c.blobs + c.manifests }

func syntheticBlob(i int) []byte { return fmt.Appendf(nil, "pullbroker bench synthetic blob %d\n", i) }

// writeSynthetic writes blobs blobs and tags tag records under root, in
// parallel.
func writeSynthetic(root string, blobs, tags int) (syntheticCache, error) {
	c := syntheticCache{blobs: blobs, tags: tags, repos: max((tags+tagsPerRepo-1)/tagsPerRepo, 1)}
	c.manifests = c.repos
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(root, "blobs", "sha256", fmt.Sprintf("%02x", i)), 0o755); err != nil {
			return c, err
		}
	}
	workers := 4 * runtime.NumCPU()
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < blobs; i += workers {
				if _, err := writeBlob(root, syntheticBlob(i)); err != nil {
					errs[w] = err
					return
				}
			}
			for r := w; r < c.repos; r += workers {
				if err := writeRepo(root, r, c); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return c, errors.Join(errs...)
}

// writeBlob stores content at its digest's path and returns the digest.
func writeBlob(root string, content []byte) (string, error) {
	d := digestOf(content)
	p := filepath.Join(root, blobFile("", d[len("sha256:"):]))
	if err := os.Mkdir(filepath.Dir(p), 0o755); err != nil && !os.IsExist(err) {
		return "", err
	}
	return d, os.WriteFile(p, content, 0o644)
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int    `json:"size"`
}

const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	ociConfig   = "application/vnd.oci.image.config.v1+json"
	ociLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// writeRepo writes repository r: its manifest (of blobs 2r and 2r+1, which
// are among the synthetic blobs when there are enough), the links to the
// three, and its tag records.
func writeRepo(root string, r int, c syntheticCache) error {
	blob := func(i int) descriptor {
		b := syntheticBlob(i % max(c.blobs, 1))
		return descriptor{Digest: digestOf(b), Size: len(b)}
	}
	config, layer := blob(2*r), blob(2*r+1)
	config.MediaType, layer.MediaType = ociConfig, ociLayer
	body, err := json.Marshal(struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Config        descriptor   `json:"config"`
		Layers        []descriptor `json:"layers"`
	}{2, ociManifest, config, []descriptor{layer}})
	if err != nil {
		return err
	}
	manifest, err := writeBlob(root, body)
	if err != nil {
		return err
	}
	repo := filepath.Join(root, "repos", syntheticRegistry, "bench", fmt.Sprintf("scale-%05d", r))
	now := time.Now().UTC()
	for _, l := range []struct {
		d        descriptor
		manifest bool
	}{{descriptor{ociManifest, manifest, len(body)}, true}, {config, false}, {layer, false}} {
		link, err := json.Marshal(map[string]any{"mediaType": l.d.MediaType, "manifest": l.manifest, "size": l.d.Size, "linkedAt": now})
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(repo, "_links", "sha256", l.d.Digest[len("sha256:"):]), link); err != nil {
			return err
		}
	}
	record, err := json.Marshal(map[string]any{"digest": manifest, "mediaType": ociManifest, "size": len(body), "confirmedAt": now})
	if err != nil {
		return err
	}
	for t := r * tagsPerRepo; t < min((r+1)*tagsPerRepo, c.tags); t++ {
		if err := writeFile(filepath.Join(repo, "_tags", fmt.Sprintf("t-%d", t)), record); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(p string, content []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, content, 0o644)
}
