package tags

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/upstream"
)

// fullDisk is a storage driver whose writes fail with ENOSPC while full is set.
type fullDisk struct {
	storagedriver.StorageDriver
	full atomic.Bool
}

func (d *fullDisk) PutContent(ctx context.Context, path string, content []byte) error {
	if d.full.Load() {
		return &storagedriver.Error{DriverName: "test", Detail: syscall.ENOSPC}
	}
	return d.StorageDriver.PutContent(ctx, path, content)
}

func newTestResolver(t *testing.T, driver storagedriver.StorageDriver, up *fakeregistry.Registry) (*Resolver, *cache.Store) {
	t.Helper()
	store, err := cache.New(driver, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := config.Upstream{Name: "upstream.test", Endpoint: up.URL(), TagTTL: time.Minute,
		DialTimeout: time.Second, ResponseTimeout: 5 * time.Second}
	cfg := &config.Config{Mode: config.ModeOnline, Upstreams: []config.Upstream{u}}
	client, err := upstream.New(u, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Config: cfg, Store: store, Upstreams: map[string]*upstream.Client{u.Name: client}})
	if err != nil {
		t.Fatal(err)
	}
	return r, store
}

// TestManifestThatCannotBeStoredIsAnsweredUncached: with the disk full, a
// verified manifest still reaches the client, and is cached once space is
// back.
func TestManifestThatCannotBeStoredIsAnsweredUncached(t *testing.T) {
	up := fakeregistry.New(t)
	want, err := up.PushRandom("team/app", "v1").Digest()
	if err != nil {
		t.Fatal(err)
	}
	disk := &fullDisk{StorageDriver: inmemory.New()}
	r, store := newTestResolver(t, disk, up)
	img := Image{Registry: "upstream.test", Repository: "team/app", Tag: "v1"}

	disk.full.Store(true)
	ans, err := r.Manifest(t.Context(), img, nil)
	if err != nil {
		t.Fatalf("disk full: %v, want the manifest answered uncached", err)
	}
	if ans.Manifest.Digest.String() != want.String() || ans.Manifest.Digest != digest.FromBytes(ans.Manifest.Body) {
		t.Fatalf("disk full: got %s, want the verified %s", ans.Manifest.Digest, want)
	}
	if _, err := store.GetManifest(t.Context(), img.Registry, img.Repository, ans.Manifest.Digest); err == nil {
		t.Fatal("the manifest was stored on a full disk")
	}

	disk.full.Store(false)
	if _, err := r.Manifest(t.Context(), img, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := store.GetManifest(t.Context(), img.Registry, img.Repository, ans.Manifest.Digest); err != nil {
		t.Fatalf("space is back, but the manifest was not cached: %v", err)
	}
}
