package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fillBlob stores content through a fill, as a pull does.
func fillBlob(t *testing.T, s *Store, content []byte) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(content)
	f, cached, err := s.Fill(dgst, -1, func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !cached {
		if err := f.Done(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return dgst
}

// holds reports whether storage holds the blob d, without counting as a read.
func holds(t *testing.T, s *Store, d digest.Digest) bool {
	t.Helper()
	_, err := s.driver.Stat(context.Background(), blobPath(d))
	if err != nil && !isPathNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// start runs s.Start until the test ends, and then waits until it no
// longer writes to storage.
func start(t *testing.T, s *Store) {
	ctx, cancel := context.WithCancel(t.Context())
	s.Start(ctx)
	t.Cleanup(func() {
		cancel()
		s.sharing.Wait()
	})
}

// lead runs s.Lead until stop is called or the test ends, and waits for
// its walk of storage.
func lead(t *testing.T, s *Store) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Lead(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	waitFor(t, "the leader's walk of storage", func() bool {
		s.usage.mu.Lock()
		indexed := s.usage.indexed
		s.usage.mu.Unlock()
		if indexed == nil {
			return false
		}
		select {
		case <-indexed:
			return true
		default:
			return false
		}
	})
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUsageIsMeasuredAtStartAndKeptOnCommit(t *testing.T) {
	root := t.TempDir()
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	ctx := t.Context()

	// A previous process left two blobs and a manifest.
	before, err := New(driver, Options{LocalRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	fillBlob(t, before, randomBytes(t, 1000))
	fillBlob(t, before, randomBytes(t, 2000))
	body := []byte(`{"schemaVersion":2,"layers":[]}`)
	if err := before.PutManifest(ctx, "docker.io", "library/app", Manifest{Digest: digest.FromBytes(body), Body: body}); err != nil {
		t.Fatal(err)
	}
	if err := before.PutPin(ctx, Pin{Registry: "docker.io", Repository: "library/app", Tag: "v1", Digest: digest.FromBytes(body), Policy: "sticky"}); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	s, err := New(driver, Options{LocalRoot: root, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(ctx)
	lead(t, s)
	waitFor(t, "the pins counted", func() bool { return testutil.ToFloat64(s.metrics.pins.WithLabelValues("sticky")) == 1 })
	wantBytes := float64(1000 + 2000 + len(body))
	if got := testutil.ToFloat64(s.metrics.sizeBytes); got != wantBytes {
		t.Errorf("size after walk = %v, want %v", got, wantBytes)
	}
	if got := testutil.ToFloat64(s.metrics.objects); got != 3 {
		t.Errorf("objects after walk = %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.metrics.pins.WithLabelValues("sticky")); got != 1 {
		t.Errorf("sticky pins after walk = %v, want 1", got)
	}

	// A commit adds; the same blob again does not.
	content := randomBytes(t, 500)
	fillBlob(t, s, content)
	fillBlob(t, s, content)
	if got := testutil.ToFloat64(s.metrics.sizeBytes); got != wantBytes+500 {
		t.Errorf("size after commit = %v, want %v", got, wantBytes+500)
	}
	if got := testutil.ToFloat64(s.metrics.objects); got != 4 {
		t.Errorf("objects after commit = %v, want 4", got)
	}

	// Pins follow Put (including a policy change) and Delete.
	p := Pin{Registry: "docker.io", Repository: "library/app", Tag: "v2", Digest: digest.FromBytes(body), Policy: "sticky"}
	if err := s.PutPin(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.Policy = "manual"
	if err := s.PutPin(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePin(ctx, "docker.io", "library/app", "v1"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.metrics.pins.WithLabelValues("sticky")); got != 0 {
		t.Errorf("sticky pins = %v, want 0", got)
	}
	if got := testutil.ToFloat64(s.metrics.pins.WithLabelValues("manual")); got != 1 {
		t.Errorf("manual pins = %v, want 1", got)
	}
}

func TestKeyFromBlobPath(t *testing.T) {
	for _, d := range []digest.Digest{digest.FromString("x"), digest.SHA512.FromString("x")} {
		if got, ok := keyFromBlobPath(blobPath(d)); !ok || got != keyOf(d) || got.digest() != d {
			t.Errorf("keyFromBlobPath(%s) = %s, %v", blobPath(d), got.digest(), ok)
		}
	}
	d := digest.FromString("x")
	for _, p := range []string{
		"/blobs/sha256/ab", "/uploads/x", "/blobs/sha256/zz/" + d.Encoded() + "/data", "/blobs/md5/ab/abcd/data",
		"/blobs/sha256/" + strings.ToUpper(d.Encoded()[:2]) + "/" + strings.ToUpper(d.Encoded()) + "/data",
		"/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded()[:62] + "/data",
		"/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data/x",
	} {
		if _, ok := keyFromBlobPath(p); ok {
			t.Errorf("keyFromBlobPath(%q) accepted", p)
		}
	}
}

func TestEvictionRemovesLeastRecentlyReadBlobs(t *testing.T) {
	for name, opts := range map[string]func(t *testing.T) (Options, *Store){
		"filesystem": func(t *testing.T) (Options, *Store) {
			root := t.TempDir()
			o := Options{LocalRoot: root, MaxSizeBytes: 2500, Registerer: prometheus.NewRegistry()}
			s, err := New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100}), o)
			if err != nil {
				t.Fatal(err)
			}
			return o, s
		},
		"inmemory": func(t *testing.T) (Options, *Store) {
			o := Options{SpoolDir: t.TempDir(), MaxSizeBytes: 2500, Registerer: prometheus.NewRegistry()}
			s, err := New(inmemory.New(), o)
			if err != nil {
				t.Fatal(err)
			}
			return o, s
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, s := opts(t)
			s.evictMinIdle = 0
			ctx := t.Context()
			s.Start(ctx)
			lead(t, s)

			a := fillBlob(t, s, randomBytes(t, 1000))
			time.Sleep(time.Millisecond)
			b := fillBlob(t, s, randomBytes(t, 1000))
			time.Sleep(time.Millisecond)
			// Reading a makes b the least recently used.
			blob, err := s.OpenBlob(ctx, a, -1)
			if err != nil {
				t.Fatal(err)
			}
			blob.Close()
			time.Sleep(time.Millisecond)
			c := fillBlob(t, s, randomBytes(t, 1000)) // 3000 > 2500: evict down to 2250

			waitFor(t, "an eviction", func() bool { return testutil.ToFloat64(s.metrics.evictions.WithLabelValues(reasonSize)) == 1 })
			if holds(t, s, b) {
				t.Errorf("least recently read blob still there")
			}
			for _, d := range []digest.Digest{a, c} {
				if !holds(t, s, d) {
					t.Errorf("blob %s evicted", d)
				}
			}
			if got := testutil.ToFloat64(s.metrics.sizeBytes); got != 2000 {
				t.Errorf("size = %v, want 2000", got)
			}
			if got := testutil.ToFloat64(s.metrics.evictedBytes.WithLabelValues(reasonSize)); got != 1000 {
				t.Errorf("evicted bytes = %v, want 1000", got)
			}
			// An evicted blob is simply filled again.
			fillBlob(t, s, randomBytes(t, 100))
			if got := testutil.ToFloat64(s.metrics.objects); got != 3 {
				t.Errorf("objects = %v, want 3", got)
			}
		})
	}
}

func TestEvictionSparesRecentlyReadBlobs(t *testing.T) {
	s, err := New(inmemory.New(), Options{SpoolDir: t.TempDir(), MaxSizeBytes: 1500})
	if err != nil {
		t.Fatal(err)
	}
	s.evictMinIdle = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.Start(ctx)
	lead(t, s)
	a := fillBlob(t, s, randomBytes(t, 1000))
	b := fillBlob(t, s, randomBytes(t, 1000))
	s.evictOnce(ctx)
	for _, d := range []digest.Digest{a, b} {
		if !holds(t, s, d) {
			t.Errorf("blob %s read within evictMinIdle was evicted", d)
		}
	}
}

func TestEvictionStopsWhenRootsCannotBeListed(t *testing.T) {
	s, err := New(inmemory.New(), Options{SpoolDir: t.TempDir(), MaxSizeBytes: 1500,
		Roots: func(context.Context) ([]Root, error) { return nil, errors.New("lock file unreadable") }})
	if err != nil {
		t.Fatal(err)
	}
	s.evictMinIdle = 0
	lead(t, s)
	a := fillBlob(t, s, randomBytes(t, 1000))
	b := fillBlob(t, s, randomBytes(t, 1000))
	s.evictOnce(t.Context())
	for _, d := range []digest.Digest{a, b} {
		if !holds(t, s, d) {
			t.Errorf("blob %s evicted although what is pinned was unknown", d)
		}
	}
}
