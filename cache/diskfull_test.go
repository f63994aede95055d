package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestDiskFull (issue 12): with the cache on a full tmpfs, what is cached
// keeps being served; a fill that cannot spool fails before any byte with
// ErrNotStored and leaves nothing; one that runs out of space midway
// fails its readers and removes its spool; new fills are held back while
// Stream passes blobs through verified; manifests, tags and the readiness
// probe fail with ErrNotStored and leave no temporary file; and once
// space is back, fills cache again.
func TestDiskFull(t *testing.T) {
	root := testenv.MountTmpfs(t, "4m")
	s, err := New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10}), Options{LocalRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cachedContent := randomBytes(t, 100<<10)
	cached := fillBlob(t, s, cachedContent)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
	if err := s.PutManifest(ctx, "docker.io", "team/app", Manifest{Digest: digest.FromBytes(manifest), Body: manifest}); err != nil {
		t.Fatal(err)
	}
	uploads := filepath.Join(root, "uploads")
	noUploads := func(when string) {
		t.Helper()
		entries, _ := os.ReadDir(uploads)
		for _, e := range entries {
			t.Errorf("%s: %s left in uploads/", when, e.Name())
		}
	}

	// Some room left: the first chunk spools, the rest does not fit.
	filler := testenv.FillDisk(t, root, 64<<10)
	big := randomBytes(t, 1<<20)
	bigDigest := digest.FromBytes(big)
	gate := make(chan struct{})
	close(gate)
	f, _, err := s.Fill(bigDigest, -1, func(context.Context) (io.ReadCloser, int64, error) {
		return &gatedBody{r: bytes.NewReader(big), gate: gate}, -1, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Done(ctx); !errors.Is(err, ErrNotStored) {
		t.Fatalf("fill that ran out of space midway: %v, want ErrNotStored", err)
	}
	noUploads("after a fill ran out of space")

	// Held back now: refused at once, before any upstream request.
	if _, _, err := s.Fill(bigDigest, int64(len(big)), func(context.Context) (io.ReadCloser, int64, error) {
		t.Error("a fill was started on a full disk")
		return nil, 0, errors.New("unreachable")
	}); !errors.Is(err, ErrNotStored) {
		t.Fatalf("fill on a full disk: %v, want ErrNotStored", err)
	}
	r, _, err := s.Stream(ctx, bigDigest, int64(len(big)), bodyOf(big, -1))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("stream on a full disk: %d bytes, %v", len(got), err)
	}

	// Every write fails cleanly once the disk is completely full.
	testenv.FillDisk(t, root, 0) // the same filler file, grown
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[],"annotations":{"a":"b"}}`)
	err = s.PutManifest(ctx, "docker.io", "team/app", Manifest{Digest: digest.FromBytes(other), Body: other})
	if !errors.Is(err, ErrNotStored) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("PutManifest on a full disk: %v, want ErrNotStored for ENOSPC", err)
	} else if strings.Contains(err.Error(), root) {
		t.Errorf("the error names where the storage lives on the host: %v", err)
	}
	if err := s.PutTag(ctx, "docker.io", "team/app", "v2", Tag{Digest: digest.FromBytes(other)}); !errors.Is(err, ErrNotStored) {
		t.Errorf("PutTag on a full disk: %v, want ErrNotStored", err)
	}
	for range 3 {
		if err := s.CheckWritable(ctx); err == nil {
			t.Error("CheckWritable succeeded on a full disk")
		}
	}
	s.fullUntil.Store(0) // the backoff passed: the next fill tries to spool
	small := randomBytes(t, 300<<10)
	f, _, err = s.Fill(digest.FromBytes(small), -1, bodyOf(small, -1))
	if err == nil {
		if _, err = f.Wait(ctx); !errors.Is(err, ErrNotStored) {
			t.Errorf("Wait of a fill that cannot spool its first byte: %v, want ErrNotStored", err)
		}
		_ = f.Done(ctx)
	} else if !errors.Is(err, ErrNotStored) {
		t.Errorf("fill on a full disk: %v", err)
	}
	noUploads("after failed writes and probes")

	// What is cached is still served.
	b, err := s.OpenBlob(ctx, cached, int64(len(cachedContent)))
	if err != nil {
		t.Fatalf("cached blob on a full disk: %v", err)
	}
	b.Close()
	if _, err := s.GetManifest(ctx, "docker.io", "team/app", digest.FromBytes(manifest)); err != nil {
		t.Fatalf("cached manifest on a full disk: %v", err)
	}

	// Space is back: no restart, no cleanup by hand.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.fullUntil.Store(0)
	fillBlob(t, s, big)
	if err := s.CheckWritable(ctx); err != nil {
		t.Fatalf("storage did not recover: %v", err)
	}
}

// TestFillThatCannotCreateItsSpool: the spool file is created while the
// fetch's request goes out. When that fails (here: the spool's disk has
// bytes free but no inode), Fill still answers ErrNotStored, so that the
// blob is passed through uncached; the fetch is cancelled, the fill slot
// comes back, and once an inode is free again the blob is cached.
func TestFillThatCannotCreateItsSpool(t *testing.T) {
	spoolDir := testenv.MountTmpfs(t, "4m,nr_inodes=16")
	root := t.TempDir()
	s, err := New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10}), Options{SpoolDir: spoolDir})
	if err != nil {
		t.Fatal(err)
	}
	var filler string
	for i := 0; ; i++ {
		p := filepath.Join(spoolDir, "inode-"+strconv.Itoa(i))
		f, err := os.Create(p)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		filler = p
	}
	content := randomBytes(t, 10<<10)
	dgst := digest.FromBytes(content)
	var fetchStarted atomic.Bool
	_, _, err = s.Fill(dgst, int64(len(content)), func(ctx context.Context) (io.ReadCloser, int64, error) {
		fetchStarted.Store(true)
		<-ctx.Done()
		return nil, 0, ctx.Err()
	})
	if !errors.Is(err, ErrNotStored) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fill without an inode for its spool: %v, want ErrNotStored for ENOSPC", err)
	}
	if strings.Contains(err.Error(), spoolDir) {
		t.Errorf("the error names the spool directory: %v", err)
	}
	if f := s.RunningFill(dgst); f != nil {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := f.Done(ctx); errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the fill that could not spool still runs after 10s (fetch started: %v)", fetchStarted.Load())
		}
	}
	if len(s.fillSlots) != 0 {
		t.Error("the failed fill kept its slot")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s.fullUntil.Store(0) // the backoff passed
	fillBlob(t, s, content)
	b, err := s.OpenBlob(t.Context(), dgst, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}
