package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Fetcher opens the upstream stream of a blob. size is -1 when unknown.
// The context is the fill's own, not a client's.
type Fetcher func(ctx context.Context) (body io.ReadCloser, size int64, err error)

// StallTimeout aborts a fill whose upstream sends nothing for this long.
var StallTimeout = 60 * time.Second

const fillBufferSize = 256 << 10

// Fill is one upstream fetch of a blob that any number of readers follow
// while it runs. It spools to a local file, verifies the digest at the
// end, and only then commits the blob to storage. Readers get every byte
// but the last as it arrives; the last one only once the digest is
// verified, so no client ever receives a whole response of unverified
// bytes. A reader that goes away does not stop the fill.
type Fill struct {
	store  *Store
	digest digest.Digest

	started chan struct{} // closed once size is known or the fill failed early
	size    int64

	mu       sync.Mutex
	cond     *sync.Cond
	spool    *os.File
	refs     int // the fill itself plus each open reader
	written  int64
	verified bool
	done     bool
	err      error
}

// Fill returns the fill in progress for dgst, starting one with fetch if
// there is none. cached is true instead when the blob is already
// committed: open it with OpenBlob.
func (s *Store) Fill(dgst digest.Digest, fetch Fetcher) (f *Fill, cached bool, err error) {
	if err := dgst.Validate(); err != nil {
		return nil, false, fmt.Errorf("blob digest %q: %w", dgst, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.fills[dgst]; f != nil {
		return f, false, nil
	}
	// Checked under the lock: a fill leaves the map only after it
	// committed, so a miss here cannot race with a commit and start a
	// second upstream fetch of the same blob.
	if _, err := s.driver.Stat(context.Background(), blobPath(dgst)); err == nil {
		return nil, true, nil
	} else if !isPathNotFound(err) {
		return nil, false, err
	}
	f = &Fill{store: s, digest: dgst, started: make(chan struct{}), size: -1, refs: 1}
	f.cond = sync.NewCond(&f.mu)
	s.fills[dgst] = f
	s.metrics.fillsInFlight.Inc()
	go f.run(fetch)
	return f, false, nil
}

// RunningFill returns the fill in progress for dgst, or nil. Offline, a
// request may still follow a fill that started before.
func (s *Store) RunningFill(dgst digest.Digest) *Fill {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fills[dgst]
}

// Wait blocks until the upstream answered and returns the blob's size (-1
// if the upstream did not say), or the error that ended the fill early.
func (f *Fill) Wait(ctx context.Context) (int64, error) {
	select {
	case <-f.started:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil && f.written == 0 {
		return 0, f.err
	}
	return f.size, nil
}

// Done reports the fill's outcome once it has ended: nil when the blob
// was verified.
func (f *Fill) Done(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	stop := context.AfterFunc(ctx, f.broadcast)
	defer stop()
	for !f.done && ctx.Err() == nil {
		f.cond.Wait()
	}
	if !f.done {
		return ctx.Err()
	}
	return f.err
}

// NewReader follows the fill from its first byte. ctx ends a blocked Read.
// Call after Wait succeeded.
func (f *Fill) NewReader(ctx context.Context) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if f.done {
		// The spool may be closed already; the blob is committed.
		b, err := f.store.OpenBlob(ctx, f.digest)
		if err != nil {
			return nil, err
		}
		return b.Content, nil
	}
	if f.spool == nil {
		return nil, errors.New("fill has not started")
	}
	f.refs++
	f.store.metrics.fillClients.Inc()
	r := &fillReader{fill: f, ctx: ctx}
	// A descriptor of its own lets WriteTo hand the spool file to
	// sendfile. After the commit rename the path is gone; ReadAt on the
	// fill's descriptor still serves.
	if own, err := os.Open(f.spool.Name()); err == nil {
		r.file = own
	}
	return r, nil
}

func (f *Fill) broadcast() {
	f.mu.Lock()
	f.cond.Broadcast()
	f.mu.Unlock()
}

// readable is how many bytes readers may have: all of them once verified,
// all but the last before.
func (f *Fill) readable() int64 {
	if f.verified || f.written == 0 {
		return f.written
	}
	return f.written - 1
}

func (f *Fill) release() {
	f.refs--
	if f.refs == 0 && f.spool != nil {
		f.spool.Close()
	}
}

func (f *Fill) run(fetch Fetcher) {
	s := f.store
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := f.fetch(ctx, cancel, fetch)
	if err == nil {
		err = f.commit(ctx)
	}
	if err == nil {
		s.accountCommit(f.digest, f.written)
	} else {
		// Forget a failed fill before its readers learn that it failed: a
		// client retrying at once must start a new fetch, not join this one
		// and get its error.
		s.forgetFill(f)
	}

	f.mu.Lock()
	if err != nil && f.err == nil {
		f.err = err
	}
	f.done = true
	select {
	case <-f.started:
	default:
		close(f.started)
	}
	f.cond.Broadcast()
	f.release()
	f.mu.Unlock()

	s.forgetFill(f)
	s.metrics.fillsInFlight.Dec()
	if err != nil {
		s.log.Warn("blob fill failed", "digest", f.digest, "error", err)
	}
}

// fetch streams the upstream body into the spool file and verifies it.
func (f *Fill) fetch(ctx context.Context, cancel context.CancelFunc, fetch Fetcher) error {
	body, size, err := fetch(ctx)
	if err != nil {
		return err
	}
	defer body.Close()

	spool, err := f.store.createSpool()
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.spool = spool
	f.size = size
	f.mu.Unlock()
	close(f.started)

	stall := time.AfterFunc(StallTimeout, cancel)
	defer stall.Stop()
	digester := f.digest.Algorithm().Digester()
	buf := make([]byte, fillBufferSize)
	var written int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(StallTimeout)
			if size >= 0 && written+int64(n) > size {
				return fmt.Errorf("upstream sent more than the %d bytes it announced for %s", size, f.digest)
			}
			if _, err := spool.Write(buf[:n]); err != nil {
				return fmt.Errorf("spooling %s: %w", f.digest, err)
			}
			digester.Hash().Write(buf[:n])
			written += int64(n)
			f.mu.Lock()
			f.written = written
			f.cond.Broadcast()
			f.mu.Unlock()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("upstream stalled for %s fetching %s", StallTimeout, f.digest)
			}
			return fmt.Errorf("reading %s from upstream: %w", f.digest, rerr)
		}
	}
	if size >= 0 && written != size {
		return fmt.Errorf("upstream sent %d of the %d bytes it announced for %s", written, size, f.digest)
	}
	if got := digester.Digest(); got != f.digest {
		return fmt.Errorf("blob %s: %w (upstream sent %s)", f.digest, oci.ErrDigestMismatch, got)
	}
	f.mu.Lock()
	f.verified = true
	f.cond.Broadcast()
	f.mu.Unlock()
	return nil
}

// forgetFill removes f from the fills in progress, unless a newer fill of
// the same digest has replaced it there.
func (s *Store) forgetFill(f *Fill) {
	s.mu.Lock()
	if s.fills[f.digest] == f {
		delete(s.fills, f.digest)
	}
	s.mu.Unlock()
}

func (s *Store) createSpool() (*os.File, error) {
	dir := s.spoolDir
	if s.localRoot != "" {
		// Same filesystem as the blobs, so commit is a rename.
		dir = s.localPath("/uploads")
	}
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating spool directory: %w", err)
	}
	return os.CreateTemp(dir, "fill-*")
}

// commit moves the verified spool file under its digest. The spool file
// stays open for readers that are still following the fill.
func (f *Fill) commit(ctx context.Context) error {
	s := f.store
	spoolName := f.spool.Name()
	defer os.Remove(spoolName)
	if s.localRoot != "" {
		dst := s.localPath(blobPath(f.digest))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.Rename(spoolName, dst)
	}
	tmp := uploadPath()
	w, err := s.driver.Writer(ctx, tmp, false)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, io.NewSectionReader(f.spool, 0, f.written)); err != nil {
		_ = w.Cancel(ctx)
		return fmt.Errorf("writing %s to storage: %w", f.digest, err)
	}
	if err := w.Commit(ctx); err != nil {
		_ = w.Cancel(ctx)
		return fmt.Errorf("committing %s to storage: %w", f.digest, err)
	}
	if err := w.Close(); err != nil {
		return err
	}
	return s.driver.Move(ctx, tmp, blobPath(f.digest))
}

type fillReader struct {
	fill   *Fill
	ctx    context.Context
	offset int64
	// file is this reader's own descriptor of the spool, or nil.
	file   *os.File
	closed bool
}

// wait blocks until bytes past the reader's offset may be read, and says
// how many; io.EOF once the verified blob has been read whole.
func (r *fillReader) wait() (avail int64, spool *os.File, err error) {
	f := r.fill
	f.mu.Lock()
	defer f.mu.Unlock()
	stop := context.AfterFunc(r.ctx, f.broadcast)
	defer stop()
	for {
		if avail = f.readable() - r.offset; avail > 0 {
			return avail, f.spool, nil
		}
		if f.err != nil {
			return 0, nil, fmt.Errorf("blob fill failed: %w", f.err)
		}
		if f.verified && r.offset >= f.written {
			return 0, nil, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			return 0, nil, err
		}
		f.cond.Wait()
	}
}

func (r *fillReader) Read(p []byte) (int, error) {
	avail, spool, err := r.wait()
	if err != nil {
		return 0, err
	}
	if int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := spool.ReadAt(p, r.offset)
	r.offset += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// WriteTo copies the blob as it arrives. With its own descriptor it
// passes io.Copy a limited *os.File, which an HTTP response (and the TCP
// connection under it) sends with sendfile instead of through user space.
func (r *fillReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		avail, spool, err := r.wait()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		var src io.Reader = io.NewSectionReader(spool, r.offset, avail)
		if r.file != nil {
			if _, err := r.file.Seek(r.offset, io.SeekStart); err != nil {
				return total, err
			}
			src = io.LimitReader(r.file, avail)
		}
		n, err := io.Copy(w, src)
		r.offset += n
		total += n
		if err != nil {
			return total, err
		}
		if n < avail {
			return total, fmt.Errorf("spool of %s ended %d bytes early", r.fill.digest, avail-n)
		}
	}
}

func (r *fillReader) Close() error {
	f := r.fill
	f.mu.Lock()
	defer f.mu.Unlock()
	if !r.closed {
		r.closed = true
		if r.file != nil {
			r.file.Close()
		}
		f.release()
		f.store.metrics.fillClients.Dec()
	}
	return nil
}
