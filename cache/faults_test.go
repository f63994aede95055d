package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// spoolFiles lists the files in the store's spool directory.
func spoolFiles(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.spoolDirectory())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func bodyOf(b []byte, announced int64) Fetcher {
	return func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(b)), announced, nil
	}
}

// TestFailedFillRemovesItsSpool (issue 12): a cut-off stream, a digest
// mismatch and an oversized body each leave nothing under uploads/ (or the
// spool directory), and each removal is counted.
func TestFailedFillRemovesItsSpool(t *testing.T) {
	for name, s := range newStores(t) {
		t.Run(name, func(t *testing.T) {
			content := randomBytes(t, 600<<10)
			dgst := digest.FromBytes(content)
			wrong := bytes.Clone(content)
			wrong[len(wrong)-1] ^= 0xff
			for i, fetch := range []Fetcher{
				bodyOf(content[:len(content)/2], int64(len(content))), // cut off
				bodyOf(wrong, int64(len(wrong))),                      // mismatch
				bodyOf(append(bytes.Clone(content), 'x'), -1),         // longer than the descriptor
			} {
				f, _, err := s.Fill(dgst, int64(len(content)), fetch)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.Done(context.Background()); err == nil {
					t.Fatalf("case %d: bad fill succeeded", i)
				}
				if files := spoolFiles(t, s); len(files) != 0 {
					t.Fatalf("case %d: failed fill left %v", i, files)
				}
				if got := testutil.ToFloat64(s.metrics.uploadsRemoved.WithLabelValues("failed")); got != float64(i+1) {
					t.Errorf("case %d: removed spools counted %v", i, got)
				}
			}
			if holds(t, s, dgst) {
				t.Fatal("a bad blob was committed")
			}
		})
	}
}

// TestStartSweepsStaleUploads (issue 12): what a killed process left under
// uploads/ is removed at start once older than the fill timeout; a fresh
// spool (another replica's running fill) and files that are not ours in a
// shared spool directory stay.
func TestStartSweepsStaleUploads(t *testing.T) {
	old := time.Now().Add(-2 * time.Hour)
	write := func(t *testing.T, dir, name string, mtime time.Time) string {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	t.Run("filesystem", func(t *testing.T) {
		root := t.TempDir()
		uploads := filepath.Join(root, "uploads")
		stale := []string{
			write(t, uploads, spoolPrefix+"killed", old),
			write(t, uploads, "put-killed", old),
			write(t, uploads, "0123abcd.5678.tmp", old),
		}
		running := write(t, uploads, spoolPrefix+"running", time.Now())
		s, err := New(filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 10}), Options{LocalRoot: root})
		if err != nil {
			t.Fatal(err)
		}
		s.Start(t.Context())
		waitFor(t, "the sweep", func() bool { return testutil.ToFloat64(s.metrics.uploadsRemoved.WithLabelValues("stale")) == 3 })
		for _, p := range stale {
			if exists(p) {
				t.Errorf("stale %s not removed", filepath.Base(p))
			}
		}
		if !exists(running) {
			t.Error("the spool of a running fill was removed")
		}
	})
	t.Run("spool directory", func(t *testing.T) {
		spool := t.TempDir()
		stale := write(t, spool, spoolPrefix+"killed", old)
		foreign := write(t, spool, "someone-else", old)
		driver := inmemory.New()
		if err := driver.PutContent(t.Context(), "/uploads/killed", []byte("x")); err != nil {
			t.Fatal(err)
		}
		s, err := New(driver, Options{SpoolDir: spool, FillTimeout: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		s.Start(t.Context())
		waitFor(t, "the sweep", func() bool { return testutil.ToFloat64(s.metrics.uploadsRemoved.WithLabelValues("stale")) == 2 })
		if exists(stale) || !exists(foreign) {
			t.Errorf("after the sweep: our stale spool exists %v (want false), a foreign file exists %v (want true)", exists(stale), exists(foreign))
		}
		if _, err := driver.Stat(t.Context(), "/uploads/killed"); !isPathNotFound(err) {
			t.Errorf("stale driver upload not removed: %v", err)
		}
	})
}

// corruptOnDisk rewrites the committed file of dgst with content.
func corruptOnDisk(t *testing.T, s *Store, dgst digest.Digest, content []byte) {
	t.Helper()
	if err := os.WriteFile(s.localPath(blobPath(dgst)), content, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestOpenBlobRemovesATruncatedBlob (issue 12): a committed blob whose size
// disagrees with its descriptor's and whose bytes no longer match (a
// truncation after a power loss) is removed and reported missing, so that
// it is fetched again; one whose bytes still match is served, and stays.
func TestOpenBlobRemovesATruncatedBlob(t *testing.T) {
	s := newStores(t)["filesystem"]
	content := randomBytes(t, 100<<10)
	dgst := fillBlob(t, s, content)
	size := int64(len(content))

	b, err := s.OpenBlob(t.Context(), dgst, size+1) // a lying descriptor
	if err != nil {
		t.Fatalf("an intact blob with a wrong descriptor size: %v", err)
	}
	b.Close()

	corruptOnDisk(t, s, dgst, content[:len(content)/2])
	if _, err := s.OpenBlob(t.Context(), dgst, size); !errors.Is(err, ErrNotFound) {
		t.Fatalf("truncated blob opened: %v", err)
	}
	if holds(t, s, dgst) {
		t.Fatal("truncated blob still stored")
	}
	if got := testutil.ToFloat64(s.metrics.corruptRemoved.WithLabelValues("size")); got != 1 {
		t.Errorf("corrupt blobs counted %v, want 1", got)
	}
	fillBlob(t, s, content) // fetched again
	b, err = s.OpenBlob(t.Context(), dgst, size)
	if err != nil || b.Size != size {
		t.Fatalf("refetched blob: %v", err)
	}
	b.Close()
}

// TestScrubRemovesCorruptBlobs (issue 12): Scrub (pullbroker verify) and
// the schedule Start runs re-hash every blob and remove corrupt ones only.
func TestScrubRemovesCorruptBlobs(t *testing.T) {
	s := newStores(t)["filesystem"]
	good := fillBlob(t, s, randomBytes(t, 70<<10))
	bad := randomBytes(t, 50<<10)
	badDigest := fillBlob(t, s, bad)
	flipped := bytes.Clone(bad)
	flipped[10] ^= 1
	corruptOnDisk(t, s, badDigest, flipped) // same size: only a re-hash sees it

	s.journal.take(time.Now())
	report, err := s.Scrub(t.Context(), 10<<20)
	if err != nil {
		t.Fatal(err)
	}
	if ev, ok := s.journal.take(time.Now())[good]; ok {
		t.Errorf("the scrub counted as a read (%+v): eviction would keep what nobody pulls", ev)
	}
	if report.Blobs != 2 || len(report.Corrupt) != 1 || report.Corrupt[0] != badDigest || report.Bytes != 120<<10 {
		t.Fatalf("scrub report %+v, want 2 blobs, 120 KiB, corrupt %s", report, badDigest)
	}
	if holds(t, s, badDigest) || !holds(t, s, good) {
		t.Fatalf("after scrub: corrupt blob held %v, good blob held %v", holds(t, s, badDigest), holds(t, s, good))
	}

	// The schedule of serve.
	root := s.localRoot
	fillBlob(t, s, bad)
	corruptOnDisk(t, s, badDigest, flipped)
	scheduled, err := New(s.driver, Options{LocalRoot: root, ScrubInterval: 20 * time.Millisecond, ScrubBytesPerSecond: 100 << 20})
	if err != nil {
		t.Fatal(err)
	}
	lead(t, scheduled)
	waitFor(t, "the scheduled scrub", func() bool {
		return testutil.ToFloat64(scheduled.metrics.corruptRemoved.WithLabelValues("scrub")) == 1
	})
	if holds(t, s, badDigest) {
		t.Error("the scheduled scrub did not remove the corrupt blob")
	}
}

// endless sends chunk every interval, for ever.
type endless struct {
	chunk    []byte
	interval time.Duration
	ctx      context.Context
}

func (e *endless) Read(p []byte) (int, error) {
	select {
	case <-time.After(e.interval):
	case <-e.ctx.Done():
		return 0, e.ctx.Err()
	}
	return copy(p, e.chunk), nil
}
func (e *endless) Close() error { return nil }

// TestFillLimits (issue 12): a fill is held to the descriptor's size even
// when the upstream announces none, to its deadline, and to the stall
// bound; an upstream that announces another size is refused before any
// byte is spooled.
func TestFillLimits(t *testing.T) {
	content := randomBytes(t, 64<<10)
	dgst := digest.FromBytes(content)
	newStore := func(t *testing.T, opts Options) *Store {
		opts.SpoolDir = t.TempDir()
		s, err := New(inmemory.New(), opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for name, tc := range map[string]struct {
		opts  Options
		fetch Fetcher
		want  string
	}{
		"endless body, no Content-Length": {
			fetch: func(ctx context.Context) (io.ReadCloser, int64, error) {
				return &endless{chunk: make([]byte, 32<<10), ctx: ctx}, -1, nil
			},
			want: "more than the 65536 bytes",
		},
		"announces another size": {
			fetch: bodyOf(content, 1<<30),
			want:  "announced 1073741824 bytes",
		},
		"trickle": {
			opts: Options{FillStallTimeout: 200 * time.Millisecond},
			fetch: func(ctx context.Context) (io.ReadCloser, int64, error) {
				return &endless{chunk: []byte{1}, interval: time.Millisecond, ctx: ctx}, -1, nil
			},
			want: "stalled",
		},
		"over the deadline": {
			opts: Options{FillTimeout: 300 * time.Millisecond, FillStallTimeout: 200 * time.Millisecond},
			fetch: func(ctx context.Context) (io.ReadCloser, int64, error) {
				// Fast enough not to stall; never done.
				return &endless{chunk: make([]byte, 64<<10), interval: 10 * time.Millisecond, ctx: ctx}, -1, nil
			},
			want: "did not finish within the fill timeout",
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, tc.opts)
			size := int64(len(content))
			if name == "over the deadline" || name == "trickle" {
				size = -1
			}
			f, _, err := s.Fill(dgst, size, tc.fetch)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := f.Done(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("fill ended with %v, want an error saying %q", err, tc.want)
			}
			if files := spoolFiles(t, s); len(files) != 0 {
				t.Errorf("failed fill left %v", files)
			}
		})
	}
}

// TestTooManyFills (issue 12): beyond MaxConcurrentFills a new fill (or
// stream) is refused with ErrTooManyFills; clients of a running fill
// still join it, and once it ends a new one starts.
func TestTooManyFills(t *testing.T) {
	s, err := New(inmemory.New(), Options{SpoolDir: t.TempDir(), MaxConcurrentFills: 1})
	if err != nil {
		t.Fatal(err)
	}
	a, b := randomBytes(t, 10<<10), randomBytes(t, 10<<10)
	gate := make(chan struct{})
	running, _, err := s.Fill(digest.FromBytes(a), -1, func(context.Context) (io.ReadCloser, int64, error) {
		return &gatedBody{r: bytes.NewReader(a), gate: gate}, int64(len(a)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Fill(digest.FromBytes(b), -1, bodyOf(b, -1)); !errors.Is(err, ErrTooManyFills) {
		t.Fatalf("second fill: %v, want ErrTooManyFills", err)
	}
	if _, _, err := s.Stream(t.Context(), digest.FromBytes(b), -1, bodyOf(b, -1)); !errors.Is(err, ErrTooManyFills) {
		t.Fatalf("stream: %v, want ErrTooManyFills", err)
	}
	if joined, _, err := s.Fill(digest.FromBytes(a), -1, bodyOf(a, -1)); err != nil || joined != running {
		t.Fatalf("joining the running fill: %v", err)
	}
	close(gate)
	if err := running.Done(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the slot is free", func() bool { return len(s.fillSlots) == 0 })
	f, _, err := s.Fill(digest.FromBytes(b), -1, bodyOf(b, -1))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Done(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.metrics.fillsRefused.WithLabelValues("concurrency")); got != 2 {
		t.Errorf("refused fills counted %v, want 2", got)
	}
}

// TestFillRefusedWhenTheDiskHasNoRoom (issue 12): a blob larger than the
// free space of the spool's disk is not started (ErrNotStored, nothing
// left behind): Stream passes it through, verified.
func TestFillRefusedWhenTheDiskHasNoRoom(t *testing.T) {
	s := newStores(t)["filesystem"]
	// A store makes its spool directory with its first fill.
	if err := os.MkdirAll(s.spoolDirectory(), 0o755); err != nil {
		t.Fatal(err)
	}
	if freeBytes(s.spoolDirectory()) < 0 {
		t.Skip("free space is unknown on this platform")
	}
	content := randomBytes(t, 10<<10)
	dgst := digest.FromBytes(content)
	huge := int64(1) << 60
	if _, _, err := s.Fill(dgst, huge, bodyOf(content, -1)); !errors.Is(err, ErrNotStored) {
		t.Fatalf("fill of an exabyte blob: %v, want ErrNotStored", err)
	}
	if files := spoolFiles(t, s); len(files) != 0 {
		t.Errorf("refused fill left %v", files)
	}
	if len(s.fillSlots) != 0 {
		t.Error("a refused fill kept its slot")
	}
	// Storage recovers: the real size fits.
	f, _, err := s.Fill(dgst, int64(len(content)), bodyOf(content, -1))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Done(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestStreamVerifies (issue 12): a blob passed through uncached is held to
// its size and digest like a fill: the last byte only once verified, an
// error instead of it otherwise.
func TestStreamVerifies(t *testing.T) {
	s := newStores(t)["inmemory"]
	content := randomBytes(t, 700<<10)
	dgst := digest.FromBytes(content)
	wrong := bytes.Clone(content)
	wrong[len(wrong)-1] ^= 0xff
	for name, tc := range map[string]struct {
		body []byte
		want string
	}{
		"good":      {content, ""},
		"last byte": {wrong, "does not match its digest"},
		"too long":  {append(bytes.Clone(content), 0), "more than"},
		"too short": {content[:len(content)-1], "of the"},
		"empty":     {nil, "of the"},
	} {
		t.Run(name, func(t *testing.T) {
			r, size, err := s.Stream(t.Context(), dgst, int64(len(content)), bodyOf(tc.body, -1))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if tc.want == "" {
				if err != nil || !bytes.Equal(got, content) || size != int64(len(content)) {
					t.Fatalf("good stream: %d bytes, size %d, %v", len(got), size, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("stream error %v, want one saying %q", err, tc.want)
			}
			if len(got) >= len(content) {
				t.Fatalf("%d bytes of a bad blob delivered", len(got))
			}
		})
	}
	if holds(t, s, dgst) || len(s.fillSlots) != 0 {
		t.Error("a stream stored the blob or kept its slot")
	}
}

// TestManifestLinksOnlyItsOwnDescriptors (issue 12): an image manifest
// links its config, layers and subject with their sizes, an index its
// manifests; digests under other keys ("blobs") or in manifests of other
// media types link nothing.
func TestManifestLinksOnlyItsOwnDescriptors(t *testing.T) {
	s := newStores(t)["inmemory"]
	d := func(s string) digest.Digest { return digest.FromString(s) }
	image := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
		"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d("config").String() + `","size":11},
		"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + d("layer").String() + `","size":22}],
		"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d("subject").String() + `","size":33},
		"blobs":[{"digest":"` + d("smuggled").String() + `","size":44}]}`)
	index := []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d("child").String() + `","size":55}],
		"layers":[{"digest":"` + d("smuggled2").String() + `","size":66}]}`)
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.example+json","layers":[{"digest":"` + d("smuggled3").String() + `","size":77}]}`)
	for _, m := range []Manifest{
		{Digest: digest.FromBytes(image), Body: image},
		{Digest: digest.FromBytes(index), MediaType: "application/vnd.oci.image.index.v1+json", Body: index},
		{Digest: digest.FromBytes(other), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: other},
	} {
		if err := s.PutManifest(t.Context(), "docker.io", "team/app", m); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]int64{"config": 11, "layer": 22, "subject": 33, "child": 55} {
		l, err := s.GetLink(t.Context(), "docker.io", "team/app", d(name))
		if err != nil || l.Size != want {
			t.Errorf("%s: link %+v, %v; want size %d", name, l, err, want)
		}
	}
	for _, name := range []string{"smuggled", "smuggled2", "smuggled3"} {
		if _, err := s.GetLink(t.Context(), "docker.io", "team/app", d(name)); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s linked (%v)", name, err)
		}
	}
}
