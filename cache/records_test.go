package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
)

// countingDriver counts the reads a Store makes, as object storage would
// bill them.
type countingDriver struct {
	storagedriver.StorageDriver
	reads atomic.Int64
}

func (d *countingDriver) GetContent(ctx context.Context, path string) ([]byte, error) {
	d.reads.Add(1)
	return d.StorageDriver.GetContent(ctx, path)
}

// TestRecordCacheServesPinnedTagsWithoutStorageReads: with
// RecordCacheTTL, what a pinned tag costs (its pin, the manifest's link and
// its body) is read from storage once; a pin another replica changes on
// the same storage is seen once the TTL has passed, one this Store changes
// at once.
func TestRecordCacheServesPinnedTagsWithoutStorageReads(t *testing.T) {
	ctx := t.Context()
	disk := &countingDriver{StorageDriver: inmemory.New()}
	const ttl = 2 * time.Second
	a, err := New(disk, Options{RecordCacheTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(disk, Options{RecordCacheTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.records.now = func() time.Time { return now }

	put := func(s *Store, body string) Manifest {
		m := Manifest{Digest: digest.FromString(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte(body)}
		if err := s.PutManifest(ctx, "r.test", "team/app", m); err != nil {
			t.Fatal(err)
		}
		if err := s.PutPin(ctx, Pin{Registry: "r.test", Repository: "team/app", Tag: "v1", Digest: m.Digest, Policy: "manual"}); err != nil {
			t.Fatal(err)
		}
		return m
	}
	pinned := func() digest.Digest {
		t.Helper()
		p, err := a.GetPin(ctx, "r.test", "team/app", "v1")
		if err != nil {
			t.Fatal(err)
		}
		m, err := a.GetManifest(ctx, "r.test", "team/app", p.Digest)
		if err != nil || m.Digest != p.Digest {
			t.Fatalf("pinned manifest: %v", err)
		}
		return p.Digest
	}

	first := put(a, `{"schemaVersion":2,"layers":[]}`)
	pinned()
	before := disk.reads.Load()
	for range 1000 {
		if got := pinned(); got != first.Digest {
			t.Fatalf("pinned digest %s, want %s", got, first.Digest)
		}
	}
	if n := disk.reads.Load() - before; n != 0 {
		t.Fatalf("1,000 pinned lookups read storage %d times, want 0", n)
	}

	// Another replica moves the pin: seen here only after the TTL.
	second := put(b, `{"schemaVersion":2,"layers":[],"annotations":{"v":"2"}}`)
	if got := pinned(); got != first.Digest {
		t.Fatalf("within the TTL: pinned digest %s, want the cached %s", got, first.Digest)
	}
	now = now.Add(ttl + time.Millisecond)
	if got := pinned(); got != second.Digest {
		t.Fatalf("after the TTL: pinned digest %s, want %s, moved by the other replica", got, second.Digest)
	}

	// This Store's own changes are seen at once.
	if err := a.DeletePin(ctx, "r.test", "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetPin(ctx, "r.test", "team/app", "v1"); err != ErrNotFound {
		t.Fatalf("after DeletePin: %v, want ErrNotFound", err)
	}
}

// slowReads holds every read of a record until release is closed.
type slowReads struct {
	countingDriver
	release chan struct{}
}

func (d *slowReads) GetContent(ctx context.Context, path string) ([]byte, error) {
	<-d.release
	return d.countingDriver.GetContent(ctx, path)
}

// TestConcurrentMissesOfARecordShareOneRead: the clients of a cold image
// ask at once for the links another replica wrote; with RecordCacheTTL,
// they cost one storage read between them.
func TestConcurrentMissesOfARecordShareOneRead(t *testing.T) {
	ctx := t.Context()
	shared := inmemory.New()
	writer, err := New(shared, Options{RecordCacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString("layer")
	if err := writer.LinkBlob(ctx, "r.test", "team/app", dgst, 5); err != nil {
		t.Fatal(err)
	}
	disk := &slowReads{countingDriver: countingDriver{StorageDriver: shared}, release: make(chan struct{})}
	reader, err := New(disk, Options{RecordCacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	const clients = 20
	errs := make(chan error, clients)
	for range clients {
		go func() {
			l, err := reader.GetLink(ctx, "r.test", "team/app", dgst)
			if err == nil && l.Size != 5 {
				err = fmt.Errorf("link of size %d, want 5", l.Size)
			}
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // the clients are all waiting on one read or more
	close(disk.release)
	for range clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := disk.reads.Load(); n != 1 {
		t.Errorf("%d clients missing one record read storage %d times, want 1", clients, n)
	}
}
