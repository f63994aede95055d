package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
)

// testCache is a filesystem cache under root, for the commands that work
// on storage (verify, gc).
type testCache struct {
	t     *testing.T
	root  string
	store *cache.Store
}

func newTestCache(t *testing.T, root string) *testCache {
	t.Helper()
	driver, localRoot, err := cache.OpenDriver(t.Context(), config.Storage{Driver: "filesystem", Parameters: map[string]any{"rootdirectory": root}})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(driver, cache.Options{LocalRoot: localRoot})
	if err != nil {
		t.Fatal(err)
	}
	return &testCache{t: t, root: root, store: store}
}

// put commits content as a blob through a fill, as a pull would.
func (c *testCache) put(content string) digest.Digest {
	c.t.Helper()
	d := digest.FromString(content)
	f, _, err := c.store.Fill(d, int64(len(content)), func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(strings.NewReader(content)), int64(len(content)), nil
	})
	if err != nil {
		c.t.Fatal(err)
	}
	if err := f.Done(c.t.Context()); err != nil {
		c.t.Fatal(err)
	}
	return d
}

// file is where the filesystem driver keeps blob d.
func (c *testCache) file(d digest.Digest) string {
	return filepath.Join(c.root, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data")
}
