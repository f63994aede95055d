package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// The cache on distribution's S3 driver (package s3-aws) against a real S3 server
// (versitygw on loopback), opened the way `pullbroker serve` opens it.
func TestS3Storage(t *testing.T) {
	srv := testenv.StartS3(t)
	testObjectStorage(t, t.Context(), "s3", srv.Parameters(), srv.Keys)
}

// The cache on distribution's gcs driver against fake-gcs-server, with a
// service-account key inline in the parameters. The driver uploads a blob
// larger than its chunksize in a resumable session that it opens at
// www.googleapis.com itself: the driver context takes that to the server.
func TestGCSStorage(t *testing.T) {
	srv := testenv.StartFakeGCS(t)
	testObjectStorage(t, srv.DriverContext(t.Context()), "gcs", srv.Parameters(), srv.Keys)
}

// The cache on distribution's azure driver against Azurite, with the
// development account's shared key and a service URL naming the account in
// its path.
func TestAzureStorage(t *testing.T) {
	srv := testenv.StartAzurite(t)
	testObjectStorage(t, t.Context(), "azure", srv.Parameters(), srv.Keys)
}

// testObjectStorage runs the cache on an object-storage driver whose bucket
// (or container) listKeys lists: fills commit and read back through another
// replica's store with ranges, failed fills leave nothing, and an upload
// left by a killed commit is never served and is swept. The parameters go
// through a configuration file, as `pullbroker serve` reads them; drivers
// are opened with ctx.
func testObjectStorage(t *testing.T, ctx context.Context, driverName string, params map[string]any, listKeys func(testing.TB) []string) {
	params["rootdirectory"] = "/pullbroker"
	// JSON is YAML, and quotes a PEM key without fuss.
	file, err := json.Marshal(map[string]any{"storage": map[string]any{"driver": driverName, "parameters": params}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pullbroker.yaml")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	newStore := func(t *testing.T, opts Options) *Store {
		t.Helper()
		driver, localRoot, err := OpenDriver(ctx, cfg.Storage)
		if err != nil {
			t.Fatal(err)
		}
		if localRoot != "" {
			t.Fatalf("%s reported local root %q", driverName, localRoot)
		}
		opts.SpoolDir = t.TempDir()
		s, err := New(driver, opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// keysUnder lists the bucket's keys below the driver's root.
	keysUnder := func(t *testing.T, prefix string) []string {
		var out []string
		for _, k := range listKeys(t) {
			if strings.HasPrefix(k, "pullbroker"+prefix) {
				out = append(out, k)
			}
		}
		return out
	}
	s := newStore(t, Options{})

	t.Run("a fill commits and reads back with ranges", func(t *testing.T) {
		// Larger than one upload chunk of every driver (gcs 16 MiB, s3
		// 10 MiB, azure 4 MiB), so that chunked uploads are what commits.
		content := randomBytes(t, 17<<20)
		dgst := digest.FromBytes(content)
		f, _, err := s.Fill(dgst, int64(len(content)), bodyOf(content, int64(len(content))))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Done(ctx); err != nil {
			t.Fatal(err)
		}
		if keys := keysUnder(t, blobPath(dgst)); len(keys) != 1 {
			t.Fatalf("bucket keys for the blob: %v", keys)
		}
		if keys := keysUnder(t, "/uploads/"); len(keys) != 0 {
			t.Fatalf("the commit left uploads behind: %v", keys)
		}
		// Another replica's store on the same bucket serves it.
		b, err := newStore(t, Options{}).OpenBlob(ctx, dgst, int64(len(content)))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if b.Size != int64(len(content)) {
			t.Fatalf("size %d, want %d", b.Size, len(content))
		}
		// The whole blob, as a GET without Range streams it (on S3 from
		// its presigned plain-HTTP URL).
		var whole bytes.Buffer
		if n, err := b.WriteTo(&whole); err != nil || n != int64(len(content)) || !bytes.Equal(whole.Bytes(), content) {
			t.Fatalf("WriteTo: %d bytes, %v; equal %v", n, err, bytes.Equal(whole.Bytes(), content))
		}
		for _, off := range []int64{16<<20 - 500, 2 << 20, 17, 0} {
			if _, err := b.Content.Seek(off, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 1000)
			if _, err := io.ReadFull(b.Content, got); err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if !bytes.Equal(got, content[off:off+1000]) {
				t.Fatalf("bytes at %d differ", off)
			}
		}
	})

	t.Run("a failed fill leaves nothing", func(t *testing.T) {
		content := randomBytes(t, 1<<20)
		dgst := digest.FromBytes(content)
		lie := append([]byte(nil), content...)
		lie[0] ^= 0xff
		for name, body := range map[string][]byte{"digest mismatch": lie, "truncated": content[:len(content)/2]} {
			f, _, err := s.Fill(dgst, -1, bodyOf(body, int64(len(content))))
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Done(ctx); err == nil {
				t.Fatalf("%s: fill succeeded", name)
			}
			if _, err := s.OpenBlob(ctx, dgst, -1); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s: blob is servable: %v", name, err)
			}
		}
		if keys := keysUnder(t, blobPath(dgst)); len(keys) != 0 {
			t.Fatalf("failed fills stored %v", keys)
		}
		if keys := keysUnder(t, "/uploads/"); len(keys) != 0 {
			t.Fatalf("failed fills left uploads: %v", keys)
		}
	})

	t.Run("a commit killed before its move is never served and is swept", func(t *testing.T) {
		content := randomBytes(t, 1<<20)
		dgst := digest.FromBytes(content)
		// What a replica killed between writing the upload and moving it
		// under the digest leaves in the bucket.
		w, err := s.driver.Writer(ctx, uploadPath(), false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(content[:len(content)/2]); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if _, err := s.OpenBlob(ctx, dgst, -1); !errors.Is(err, ErrNotFound) {
			t.Fatalf("an unmoved upload is servable: %v", err)
		}
		restarted := newStore(t, Options{FillTimeout: time.Nanosecond})
		sweepCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		restarted.Start(sweepCtx)
		waitFor(t, "the sweep", func() bool {
			return testutil.ToFloat64(restarted.metrics.uploadsRemoved.WithLabelValues("stale")) == 1
		})
		if keys := keysUnder(t, "/uploads/"); len(keys) != 0 {
			t.Fatalf("the sweep left %v", keys)
		}
	})

	t.Run("replicas share reads, commits and the cache size through the bucket", func(t *testing.T) {
		a := newStore(t, Options{Replica: "a", AccountingInterval: clusterInterval})
		b := newStore(t, Options{Replica: "b", AccountingInterval: clusterInterval})
		start(t, a)
		lead(t, a)
		start(t, b)

		committed := time.Now()
		d := fillBlob(t, b, randomBytes(t, 4321))
		read(t, b, d)
		waitFor(t, "B's commit and read in A's index", func() bool {
			e, ok := indexed(a, d)
			return ok && e.size == 4321 && e.access > committed.UnixNano()
		})
		waitFor(t, "B's size metrics equal to A's", func() bool {
			bytes := testutil.ToFloat64(a.metrics.sizeBytes)
			return bytes >= 4321 && testutil.ToFloat64(b.metrics.sizeBytes) == bytes &&
				testutil.ToFloat64(b.metrics.objects) == testutil.ToFloat64(a.metrics.objects)
		})
		// Listed through the driver: a new S3 client while the stores run
		// races inside the AWS SDK.
		waitFor(t, "the journal objects consumed", func() bool { return len(journalObjects(t, a.driver)) == 0 })
	})
}
