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

// pinningOwner is the owner of every image: asked for a tag, it pins the
// tag to its first resolution and the tag moves upstream, but its answer
// never arrives. It never answers a digest either.
type pinningOwner struct {
	t      *testing.T
	store  *cache.Store
	up     *fakeregistry.Registry
	pinned digest.Digest
}

func (o *pinningOwner) OwnedElsewhere(Image) bool { return true }

func (o *pinningOwner) Resolve(ctx context.Context, img Image, _ []string) (digest.Digest, Outcome, bool) {
	if img.Tag == "" {
		return "", "", false
	}
	err := o.store.PutPin(ctx, cache.Pin{Registry: img.Registry, Repository: img.Repository, Tag: img.Tag,
		Digest: o.pinned, Policy: config.PolicySticky, PinnedAt: time.Now()})
	if err != nil {
		o.t.Error(err)
	}
	o.up.PushRandom(img.Repository, img.Tag)
	return "", "", false
}

// TestStickyPinDecidedOnceStands: the replica that owns a sticky tag pins
// it, the tag moves upstream, and the owner's answer is lost. The replica
// that asked resolves the tag itself, but answers the pin the owner
// decided and leaves it as it is: a sticky tag is decided once.
func TestStickyPinDecidedOnceStands(t *testing.T) {
	up := fakeregistry.New(t)
	first, err := up.PushRandom("team/app", "v1").Digest()
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(inmemory.New(), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := config.Upstream{Name: "upstream.test", Endpoint: up.URL(), TagTTL: time.Minute, DialTimeout: time.Second, ResponseTimeout: 5 * time.Second}
	cfg := &config.Config{Mode: config.ModeOnline, Upstreams: []config.Upstream{u},
		Pins: []config.PinRule{{Registry: u.Name, Repository: "team/*", Policy: config.PolicySticky}}}
	client, err := upstream.New(u, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	owner := &pinningOwner{t: t, store: store, up: up, pinned: digest.Digest(first.String())}
	r, err := New(Options{Config: cfg, Store: store, Upstreams: map[string]*upstream.Client{u.Name: client}, Owners: owner})
	if err != nil {
		t.Fatal(err)
	}
	img := Image{Registry: u.Name, Repository: "team/app", Tag: "v1"}

	ans, err := r.Manifest(t.Context(), img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ans.Manifest.Digest != owner.pinned {
		t.Errorf("answered %s, want the owner's pin %s (the tag moved upstream since)", ans.Manifest.Digest, owner.pinned)
	}
	pin, err := store.GetPin(t.Context(), img.Registry, img.Repository, img.Tag)
	if err != nil || pin.Digest != owner.pinned {
		t.Errorf("pin after the resolution: %+v, %v; want the owner's %s", pin, err, owner.pinned)
	}
}
