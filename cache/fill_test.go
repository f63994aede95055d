package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

func newStores(t *testing.T) map[string]*Store {
	t.Helper()
	root := t.TempDir()
	fs := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	out := map[string]*Store{}
	for name, c := range map[string]struct {
		d     storagedriver.StorageDriver
		local string
	}{"filesystem": {fs, root}, "inmemory": {inmemory.New(), ""}} {
		s, err := New(c.d, Options{LocalRoot: c.local, SpoolDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		out[name] = s
	}
	return out
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// gatedBody releases its first chunk at once and the rest only when
// told, so a test can observe readers while the fill is still running.
type gatedBody struct {
	r      io.Reader
	gate   chan struct{}
	opened bool
}

func (g *gatedBody) Read(p []byte) (int, error) {
	if g.opened {
		<-g.gate
	}
	g.opened = true
	if len(p) > 1024 {
		p = p[:1024]
	}
	return g.r.Read(p)
}
func (g *gatedBody) Close() error { return nil }

func TestFillServesManyReadersFromOneFetch(t *testing.T) {
	for name, s := range newStores(t) {
		t.Run(name, func(t *testing.T) {
			content := randomBytes(t, 3<<20)
			dgst := digest.FromBytes(content)
			var fetches atomic.Int32
			fetch := func(ctx context.Context) (io.ReadCloser, int64, error) {
				fetches.Add(1)
				return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
			}
			var wg sync.WaitGroup
			errs := make(chan error, 50)
			for i := range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- readThroughFill(s, dgst, fetch, content, i%2 == 0)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if n := fetches.Load(); n != 1 {
				t.Fatalf("upstream fetched %d times, want 1", n)
			}
			b, err := s.OpenBlob(context.Background(), dgst, -1)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			got, _ := io.ReadAll(b.Content)
			if !bytes.Equal(got, content) {
				t.Fatal("committed blob differs from upstream content")
			}
		})
	}
}

// readThroughFill reads the blob through a fill, with Read or, as an HTTP
// response does, with WriteTo.
func readThroughFill(s *Store, dgst digest.Digest, fetch Fetcher, want []byte, viaWriteTo bool) error {
	ctx := context.Background()
	f, cached, err := s.Fill(dgst, -1, fetch)
	if err != nil {
		return err
	}
	if cached {
		b, err := s.OpenBlob(ctx, dgst, -1)
		if err != nil {
			return err
		}
		defer b.Close()
		got, _ := io.ReadAll(b.Content)
		if !bytes.Equal(got, want) {
			return errors.New("cached blob differs")
		}
		return nil
	}
	if _, err := f.Wait(ctx); err != nil {
		return err
	}
	r, err := f.NewReader(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	var got []byte
	if viaWriteTo {
		var buf bytes.Buffer
		_, err = r.(io.WriterTo).WriteTo(&buf)
		got = buf.Bytes()
	} else {
		got, err = io.ReadAll(r)
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("fill reader returned different bytes")
	}
	return f.Done(ctx)
}

func TestFillWithholdsLastByteUntilVerifiedAndRejectsMismatch(t *testing.T) {
	for name, s := range newStores(t) {
		t.Run(name, func(t *testing.T) {
			announced := randomBytes(t, 1<<20)
			dgst := digest.FromBytes(announced)
			lie := append([]byte(nil), announced...)
			lie[len(lie)-1] ^= 0xff
			gate := make(chan struct{})
			fetch := func(ctx context.Context) (io.ReadCloser, int64, error) {
				return &gatedBody{r: bytes.NewReader(lie), gate: gate}, int64(len(lie)), nil
			}
			ctx := context.Background()
			f, _, err := s.Fill(dgst, -1, fetch)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			r, err := f.NewReader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// A second reader takes the WriteTo path an HTTP response uses.
			w, err := f.NewReader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			writeToErr := make(chan error, 1)
			var written bytes.Buffer
			go func() {
				_, err := w.(io.WriterTo).WriteTo(&written)
				writeToErr <- err
			}()
			close(gate)
			got, err := io.ReadAll(r)
			r.Close()
			if err := <-writeToErr; !errors.Is(err, oci.ErrDigestMismatch) {
				t.Fatalf("WriteTo error = %v, want digest mismatch", err)
			}
			w.Close()
			if written.Len() >= len(lie) {
				t.Fatalf("WriteTo delivered all %d bytes of unverified content", written.Len())
			}
			if !errors.Is(err, oci.ErrDigestMismatch) {
				t.Fatalf("reader error = %v, want digest mismatch", err)
			}
			if len(got) >= len(lie) {
				t.Fatalf("reader received all %d bytes of unverified content", len(got))
			}
			if _, err := s.OpenBlob(ctx, dgst, -1); !errors.Is(err, ErrNotFound) {
				t.Fatalf("mismatched blob became visible: %v", err)
			}
			// The failed fill is gone: a new request fetches again.
			f2, cached, err := s.Fill(dgst, -1, func(ctx context.Context) (io.ReadCloser, int64, error) {
				return io.NopCloser(bytes.NewReader(announced)), int64(len(announced)), nil
			})
			if err != nil || cached {
				t.Fatalf("Fill after failure = cached %v, %v", cached, err)
			}
			if err := f2.Done(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFillRejectsTruncatedUpstream(t *testing.T) {
	s := newStores(t)["filesystem"]
	content := randomBytes(t, 1<<20)
	dgst := digest.FromBytes(content)
	f, _, err := s.Fill(dgst, -1, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(content[:len(content)/2])), int64(len(content)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Done(context.Background()); err == nil {
		t.Fatal("truncated fill succeeded")
	}
	if _, err := s.OpenBlob(context.Background(), dgst, -1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("truncated blob became visible: %v", err)
	}
}

func TestFillOutlivesItsReaders(t *testing.T) {
	s := newStores(t)["filesystem"]
	content := randomBytes(t, 1<<20)
	dgst := digest.FromBytes(content)
	gate := make(chan struct{})
	f, _, err := s.Fill(dgst, -1, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return &gatedBody{r: bytes.NewReader(content), gate: gate}, int64(len(content)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	clientCtx, disconnect := context.WithCancel(context.Background())
	r, err := f.NewReader(clientCtx)
	if err != nil {
		t.Fatal(err)
	}
	// The first chunk but its last byte is readable at once; the next
	// read blocks.
	if _, err := io.ReadFull(r, make([]byte, 1023)); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(10 * time.Millisecond)
	disconnect()
	if err := <-readErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("blocked read after disconnect = %v, want context.Canceled", err)
	}
	r.Close()
	close(gate)
	if err := f.Done(context.Background()); err != nil {
		t.Fatalf("fill failed after its only reader left: %v", err)
	}
	if !holds(t, s, dgst) {
		t.Fatal("blob not committed")
	}
}
