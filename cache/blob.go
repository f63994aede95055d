package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// Blob is a committed blob opened for reading. Content is an *os.File when
// the storage is a local filesystem, so that http.ServeContent can use
// sendfile. Close it, not Content: until then the blob counts as being
// read, and is not evicted.
type Blob struct {
	Size    int64
	ModTime time.Time
	Content io.ReadSeekCloser
	// readDone, when set, ends the read that OpenBlob began.
	readDone func()
}

// WriteTo copies the whole blob to w, as cheaply as the storage allows:
// a local file by sendfile when w is a client connection (an
// *io.LimitedReader over the *os.File, as http.ServeContent hands it),
// an object by splice or large buffers (see objectget.go). Content must
// not have been read. Fewer than Size bytes written is an error.
func (b *Blob) WriteTo(w io.Writer) (int64, error) {
	var n int64
	var err error
	if r, ok := b.Content.(*driverReader); ok {
		n, err = r.WriteTo(w)
	} else {
		n, err = io.Copy(w, io.LimitReader(b.Content, b.Size))
	}
	if err == nil && n < b.Size {
		err = fmt.Errorf("the cached blob ended after %d of %d bytes: %w", n, b.Size, io.ErrUnexpectedEOF)
	}
	return n, err
}

// Close closes Content and ends the read.
func (b *Blob) Close() error {
	if b.readDone != nil {
		b.readDone()
		b.readDone = nil
	}
	return b.Content.Close()
}

// OpenBlob opens a committed blob. size is the size its descriptor gives
// (-1 unknown): a stored blob of another size is re-hashed, and removed
// as corrupt (ErrNotFound, so that it is fetched again) unless it still
// matches its digest.
func (s *Store) OpenBlob(ctx context.Context, dgst digest.Digest, size int64) (*Blob, error) {
	b, err := s.openBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	s.touch(dgst)
	if size < 0 || b.Size == size {
		s.beginRead(b, dgst)
		return b, nil
	}
	b.Content.Close()
	intact, err := s.removeIfCorrupt(ctx, dgst, nil, "size")
	if err != nil {
		return nil, err
	}
	if !intact {
		return nil, ErrNotFound
	}
	// The bytes match the digest: the descriptor that gave size is wrong,
	// not the cache.
	s.log.Warn("a descriptor's size disagrees with a verified cached blob", "digest", dgst, "descriptorSize", size, "storedSize", b.Size)
	b, err = s.openBlob(ctx, dgst)
	if err != nil {
		return nil, err
	}
	s.beginRead(b, dgst)
	return b, nil
}

// beginRead counts b as being read until it is closed (see journal.take).
func (s *Store) beginRead(b *Blob, dgst digest.Digest) {
	s.journal.beginRead(dgst)
	b.readDone = func() {
		s.journal.endRead(dgst)
		s.touch(dgst) // read until now
	}
}

// openBlob opens a committed blob without counting it as a read for
// eviction (the scrub reads every blob).
func (s *Store) openBlob(ctx context.Context, dgst digest.Digest) (*Blob, error) {
	if s.localRoot != "" {
		f, err := os.Open(s.localPath(blobPath(dgst)))
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNotFound
		}
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		return &Blob{Size: fi.Size(), ModTime: fi.ModTime(), Content: f}, nil
	}
	fi, err := s.driver.Stat(ctx, blobPath(dgst))
	if isPathNotFound(err) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &Blob{
		Size:    fi.Size(),
		ModTime: fi.ModTime(),
		Content: &driverReader{ctx: ctx, driver: s.driver, path: blobPath(dgst), size: fi.Size()},
	}, nil
}

// BlobURL returns a short-lived URL at which the client of r can fetch
// the committed blob from storage itself, or "" when the driver has none
// (a local filesystem). It does not check that the blob exists.
func (s *Store) BlobURL(r *http.Request, dgst digest.Digest) (string, error) {
	return s.driver.RedirectURL(r, blobPath(dgst))
}

func (s *Store) localPath(driverPath string) string {
	return filepath.Join(s.localRoot, filepath.FromSlash(driverPath))
}

// driverReader reads a driver object from any offset, reopening the
// driver's stream after a Seek, so Range requests work on every driver.
type driverReader struct {
	ctx    context.Context
	driver storagedriver.StorageDriver
	path   string
	size   int64
	offset int64
	rc     io.ReadCloser
}

func (r *driverReader) Read(p []byte) (int, error) {
	if r.offset >= r.size {
		return 0, io.EOF
	}
	if r.rc == nil {
		rc, err := r.driver.Reader(r.ctx, r.path, r.offset)
		if err != nil {
			return 0, err
		}
		r.rc = rc
	}
	n, err := r.rc.Read(p)
	r.offset += int64(n)
	return n, err
}

// WriteTo copies the object from the current offset to its end, from the
// storage's plain-HTTP URL when it has one and the rest is large, else
// through the driver's Reader with pooled buffers.
func (r *driverReader) WriteTo(w io.Writer) (int64, error) {
	rest := r.size - r.offset
	if rest <= 0 {
		return 0, nil
	}
	if r.rc == nil && rest >= directGetMinBytes {
		if body := r.openDirect(rest); body != nil {
			defer body.Close()
			n, err := body.writeTo(w)
			r.offset += n
			return n, err
		}
	}
	return copyPooled(w, r)
}

// openDirect starts a GET of the rest of the object from the URL the
// driver presigns, or returns nil when there is none or it fails.
func (r *driverReader) openDirect(rest int64) *directBody {
	rawURL, err := r.driver.RedirectURL((&http.Request{Method: http.MethodGet}).WithContext(r.ctx), r.path)
	if err != nil || rawURL == "" {
		return nil
	}
	body, err := openDirectGet(r.ctx, rawURL, r.offset, rest)
	if err != nil {
		return nil
	}
	return body
}

func (r *driverReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.offset + offset
	case io.SeekEnd:
		abs = r.size + offset
	default:
		return 0, fmt.Errorf("seek: invalid whence %d", whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek: negative position %d", abs)
	}
	if abs != r.offset && r.rc != nil {
		r.rc.Close()
		r.rc = nil
	}
	r.offset = abs
	return abs, nil
}

func (r *driverReader) Close() error {
	if r.rc != nil {
		return r.rc.Close()
	}
	return nil
}
