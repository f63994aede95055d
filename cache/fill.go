package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Fetcher opens the upstream stream of a blob. size is -1 when unknown.
// The context is the fill's own, not a client's: it ends at the fill's
// deadline, or when the upstream stalls.
type Fetcher func(ctx context.Context) (body io.ReadCloser, size int64, err error)

// ReplicaSource is a fetched body that another replica on the same
// storage sends, as the replica that owns a blob does for the others; it
// commits the blob there itself. A fill of object storage that read such
// a body whole waits for that commit before it looks at storage, and
// writes the blob only if storage does not hold it then, instead of
// writing it a second time.
type ReplicaSource interface {
	// WaitCommitted returns once the source's commit ended, whether or
	// not it stored the blob; an error when that cannot be known.
	WaitCommitted(ctx context.Context) error
	// Rejected tells the source that the bytes it sent do not match the
	// blob's digest.
	Rejected(err error)
}

const fillBufferSize = 256 << 10

// stallMinBytes is the least a fill must receive within its stall
// timeout: an upstream that trickles a byte a second is stalled too.
const stallMinBytes = 32 << 10

// spoolPrefix names fill spools, so that the sweep at start knows its own
// files in a spool directory shared with others (the system temp dir).
const spoolPrefix = "pullbroker-fill-"

// Fill is one upstream fetch of a blob that any number of readers follow
// while it runs. It spools to a local file, verifies the size and digest
// at the end, and only then commits the blob to storage. Readers get every
// byte but the last as it arrives; the last one only once the digest is
// verified, so no client ever receives a whole response of unverified
// bytes. A reader that goes away does not stop the fill. A failed fill
// removes its spool file.
type Fill struct {
	store  *Store
	digest digest.Digest

	// spool is set, or spoolErr, before spoolReady is closed: the file is
	// created while the fetch's request goes out.
	spool      *os.File
	spoolErr   error
	spoolReady chan struct{}

	// started is closed once the first bytes are spooled or the fill
	// ended: a failure before it (storage full, upstream refused) reaches
	// clients before any response header.
	started   chan struct{}
	startOnce sync.Once

	mu       sync.Mutex
	cond     *sync.Cond
	size     int64 // expected, then as announced; -1 unknown
	refs     int   // the fill itself plus each open reader
	written  int64
	verified bool
	done     bool
	err      error
}

// Fill returns the fill in progress for dgst, starting one with fetch if
// there is none. cached is true instead when the blob is already
// committed: open it with OpenBlob. size is the size the blob's descriptor
// gives (-1 unknown): an upstream that announces or sends another fails
// the fill.
//
// A new fill is refused with ErrTooManyFills beyond
// Options.MaxConcurrentFills, and with ErrNotStored when storage cannot
// take the blob (no space): Stream passes it through uncached.
func (s *Store) Fill(dgst digest.Digest, size int64, fetch Fetcher) (f *Fill, cached bool, err error) {
	return s.fill(dgst, size, fetch, true)
}

// FillAbsent is Fill for a blob that storage did not hold a moment ago:
// OpenBlob answered ErrNotFound, here or on the replica that asks this
// one for the blob. It starts the fetch without looking at storage again
// (a round trip on object storage, before the first byte) unless a fill
// of this store committed the blob lately, which a fill running at that
// moment may have. A blob that another replica committed in that moment
// is fetched once more, and its commit then writes nothing.
func (s *Store) FillAbsent(dgst digest.Digest, size int64, fetch Fetcher) (f *Fill, cached bool, err error) {
	return s.fill(dgst, size, fetch, false)
}

func (s *Store) fill(dgst digest.Digest, size int64, fetch Fetcher, look bool) (f *Fill, cached bool, err error) {
	if err := dgst.Validate(); err != nil {
		return nil, false, fmt.Errorf("blob digest %q: %w", dgst, err)
	}
	s.mu.Lock()
	if f := s.fills[dgst]; f != nil {
		s.mu.Unlock()
		return f, false, nil
	}
	dir, cached, err := s.admitFill(dgst, size, look)
	if cached || err != nil {
		s.mu.Unlock()
		return nil, cached, err
	}
	ctx, cancel := s.fillContext(context.Background(), dgst)
	f = &Fill{store: s, digest: dgst, started: make(chan struct{}), spoolReady: make(chan struct{}), size: size, refs: 1}
	f.cond = sync.NewCond(&f.mu)
	s.fills[dgst] = f
	s.metrics.fillsInFlight.Inc()
	s.mu.Unlock()

	// The request for the blob goes out while the spool file is created,
	// which would otherwise delay it by a file creation on the local disk.
	go f.run(ctx, cancel, fetch)
	spool, err := os.CreateTemp(dir, spoolPrefix+"*")
	if err != nil {
		err = s.notStored(fmt.Errorf("creating a spool file: %w", err))
		s.metrics.fillsRefused.WithLabelValues("storage").Inc()
		cancel()
	}
	f.spool, f.spoolErr = spool, err
	close(f.spoolReady)
	if err != nil {
		return nil, false, err
	}
	return f, false, nil
}

// admitFill, called with s.mu held when no fill of dgst runs, says
// whether a new one may start: cached when storage holds the blob (looked
// at when look is set or a fill committed it lately), else the directory
// to spool it in, with a fill slot taken.
func (s *Store) admitFill(dgst digest.Digest, size int64, look bool) (spoolDir string, cached bool, err error) {
	// Checked under the lock: a fill leaves the map only after it
	// committed and was remembered as committed, so a miss here cannot
	// race with a commit and start a second upstream fetch of the same
	// blob.
	if look || s.commits.has(dgst, time.Now()) {
		if _, err := s.driver.Stat(context.Background(), blobPath(dgst)); err == nil {
			return "", true, nil
		} else if !isPathNotFound(err) {
			return "", false, err
		}
	}
	select {
	case s.fillSlots <- struct{}{}:
	default:
		s.metrics.fillsRefused.WithLabelValues("concurrency").Inc()
		return "", false, fmt.Errorf("%w (%d): retry shortly", ErrTooManyFills, cap(s.fillSlots))
	}
	dir, err := s.spoolRoom(size)
	if err != nil {
		<-s.fillSlots
		s.metrics.fillsRefused.WithLabelValues("storage").Inc()
		return "", false, err
	}
	return dir, false, nil
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
		b, err := f.store.OpenBlob(ctx, f.digest, f.size)
		if err != nil {
			return nil, err
		}
		return b.Content, nil
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

// run fetches the blob within ctx, which cancel ends, and commits it.
func (f *Fill) run(ctx context.Context, cancel context.CancelFunc, fetch Fetcher) {
	s := f.store
	defer cancel()
	source, err := f.fetch(ctx, fetch)
	if err == nil {
		err = f.commit(ctx, source)
	}
	if err == nil {
		s.accountCommit(f.digest, f.written)
	}
	// Forget the fill and free its slot before its readers learn how it
	// ended: a client retrying a failed fill at once must start a new
	// fetch, not join this one and get its error, and one asking right
	// after the commit is sent to storage, which FillAbsent then looks at.
	s.mu.Lock()
	if err == nil {
		s.commits.add(f.digest, time.Now())
	}
	if s.fills[f.digest] == f {
		delete(s.fills, f.digest)
	}
	<-s.fillSlots
	s.mu.Unlock()
	// Readers keep their descriptors of the spool; its name goes now (a
	// committed spool was renamed already).
	if f.spool != nil {
		if rmErr := os.Remove(f.spool.Name()); rmErr == nil && err != nil {
			s.metrics.uploadsRemoved.WithLabelValues("failed").Inc()
		}
	}

	f.mu.Lock()
	if err != nil && f.err == nil {
		f.err = err
	}
	f.done = true
	f.markStarted()
	f.cond.Broadcast()
	f.release()
	f.mu.Unlock()

	s.metrics.fillsInFlight.Dec()
	if err != nil {
		s.log.Warn("blob fill failed", "digest", f.digest, "error", err)
	}
}

func (f *Fill) markStarted() { f.startOnce.Do(func() { close(f.started) }) }

// fetch streams the upstream body into the spool file and verifies it.
// source is the body when another replica sent it.
func (f *Fill) fetch(ctx context.Context, fetch Fetcher) (source ReplicaSource, err error) {
	s := f.store
	ctx, progress, stopWatch := s.watchStall(ctx, f.digest)
	defer stopWatch()
	body, announced, err := fetch(ctx)
	// Store.fill creates the spool file meanwhile; when it could not, the
	// fetch was cancelled and the fill fails for want of storage.
	<-f.spoolReady
	if f.spoolErr != nil {
		if err == nil {
			body.Close()
		}
		return nil, f.spoolErr
	}
	if err != nil {
		return nil, fillError(ctx, err)
	}
	defer body.Close()
	source, _ = body.(ReplicaSource)
	f.mu.Lock()
	size, err := expectedSize(f.digest, f.size, announced)
	f.size = size
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	checked := newCheckedBody(body, f.digest, size)
	buf := make([]byte, fillBufferSize)
	for {
		n, rerr := checked.Read(buf)
		if n > 0 {
			progress(n)
			if _, err := f.spool.Write(buf[:n]); err != nil {
				return nil, s.notStored(fmt.Errorf("spooling %s: %w", f.digest, err))
			}
			f.mu.Lock()
			first := f.written == 0
			f.written += int64(n)
			f.cond.Broadcast()
			f.mu.Unlock()
			if first {
				f.markStarted()
				// The readers just woken would otherwise wait for this
				// loop to block, which it may not do before the blob is
				// whole when the bytes come fast: a client's first byte
				// goes before the rest of the copy.
				runtime.Gosched()
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			reportMismatch(body, rerr)
			return nil, fillError(ctx, rerr)
		}
	}
	f.mu.Lock()
	f.verified = true
	f.cond.Broadcast()
	f.mu.Unlock()
	return source, nil
}

// reportMismatch tells a body that another replica sent that its bytes
// failed verification, when err says they did.
func reportMismatch(body io.Reader, err error) {
	if source, ok := body.(ReplicaSource); ok && errors.Is(err, oci.ErrDigestMismatch) {
		source.Rejected(err)
	}
}

// fillContext is the context a fill or Stream runs on: it ends at the
// fill deadline, with a cause that says so.
func (s *Store) fillContext(parent context.Context, dgst digest.Digest) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(parent, s.fillTimeout,
		fmt.Errorf("fetching %s did not finish within the fill timeout (%s)", dgst, s.fillTimeout))
}

// watchStall returns a context that ends when fewer than stallMinBytes
// were reported to progress within the stall timeout; stop ends the watch
// and the context.
func (s *Store) watchStall(parent context.Context, dgst digest.Digest) (ctx context.Context, progress func(int), stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(s.fillStallTimeout)
		defer tick.Stop()
		var last int64
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				n := received.Load()
				if n-last < stallMinBytes {
					cancel(fmt.Errorf("upstream stalled: %d bytes of %s in %s", n-last, dgst, s.fillStallTimeout))
					return
				}
				last = n
			}
		}
	}()
	return ctx, func(n int) { received.Add(int64(n)) }, func() { close(done); cancel(nil) }
}

// fillError is err, or the reason the fill's context ended (deadline,
// stall) when that is what cut the upstream stream.
func fillError(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// expectedSize is the size a fetch must deliver: the descriptor's, which
// the upstream's announcement must agree with, or else the announced one.
func expectedSize(dgst digest.Digest, expected, announced int64) (int64, error) {
	if expected >= 0 && announced >= 0 && expected != announced {
		return expected, fmt.Errorf("upstream announced %d bytes for %s, its descriptor says %d", announced, dgst, expected)
	}
	if expected >= 0 {
		return expected, nil
	}
	return announced, nil
}

// checkedBody reads a blob with the checks every fetch makes: never more
// than the expected size, exactly that size at the end, and the digest.
// Its io.EOF means the bytes read were verified.
type checkedBody struct {
	r        io.Reader
	dgst     digest.Digest
	digester digest.Digester
	limit    int64 // -1: unknown
	n        int64
}

func newCheckedBody(r io.Reader, dgst digest.Digest, limit int64) *checkedBody {
	return &checkedBody{r: r, dgst: dgst, digester: dgst.Algorithm().Digester(), limit: limit}
}

func (b *checkedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if b.limit >= 0 && b.n+int64(n) > b.limit {
		return 0, fmt.Errorf("upstream sent more than the %d bytes of %s", b.limit, b.dgst)
	}
	b.n += int64(n)
	b.digester.Hash().Write(p[:n])
	if err == io.EOF {
		if b.limit >= 0 && b.n != b.limit {
			return n, fmt.Errorf("upstream sent %d of the %d bytes of %s", b.n, b.limit, b.dgst)
		}
		if got := b.digester.Digest(); got != b.dgst {
			return n, fmt.Errorf("blob %s: %w (upstream sent %s)", b.dgst, oci.ErrDigestMismatch, got)
		}
	}
	return n, err
}

// spoolDirectory is where fills spool: under the filesystem driver's
// root (so commit is a rename), else Options.SpoolDir.
func (s *Store) spoolDirectory() string {
	if s.localRoot != "" {
		return s.localPath("/uploads")
	}
	if s.spoolDir != "" {
		return s.spoolDir
	}
	return os.TempDir()
}

// spoolRoom returns the directory to spool a fill of size bytes (-1
// unknown) in. It refuses with ErrNotStored when storage ran out of space
// moments ago or the local disk has not room for size.
func (s *Store) spoolRoom(size int64) (dir string, err error) {
	if s.recentlyFull() {
		return "", fmt.Errorf("%w: storage ran out of space less than %s ago", ErrNotStored, fullBackoff)
	}
	dir = s.spoolDirectory()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", s.notStored(fmt.Errorf("creating the spool directory: %w", err))
	}
	if free := freeBytes(dir); free >= 0 && size >= 0 && free < size+freeSpaceReserve {
		return "", fmt.Errorf("%w: %d bytes free for spooling, the blob has %d", ErrNotStored, free, size)
	}
	return dir, nil
}

// notStored marks err, a failed write to storage, as ErrNotStored, and
// holds back new fills for a while when it says storage is full. Its
// message leaves out where the storage lives on this host.
func (s *Store) notStored(err error) error {
	if errors.Is(err, ErrNotStored) {
		return err
	}
	if isNoSpace(err) {
		s.markFull()
	}
	msg := err.Error()
	for _, dir := range []string{s.localRoot, s.spoolDir} {
		if dir != "" {
			msg = strings.ReplaceAll(msg, dir, "")
		}
	}
	return &notStoredError{cause: err, msg: ErrNotStored.Error() + ": " + msg}
}

type notStoredError struct {
	cause error
	msg   string
}

func (e *notStoredError) Error() string   { return e.msg }
func (e *notStoredError) Unwrap() []error { return []error{ErrNotStored, e.cause} }

// commit makes the verified spool durable and moves it under its digest.
// The spool file stays open for readers that are still following the
// fill.
func (f *Fill) commit(ctx context.Context, source ReplicaSource) error {
	s := f.store
	if s.localRoot != "" {
		// Without the sync, a power loss after the rename could leave a
		// truncated file under the digest.
		if err := f.spool.Sync(); err != nil {
			return s.notStored(fmt.Errorf("syncing %s: %w", f.digest, err))
		}
		dst := s.localPath(blobPath(f.digest))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return s.notStored(err)
		}
		if err := os.Rename(f.spool.Name(), dst); err != nil {
			return s.notStored(err)
		}
		return syncDir(filepath.Dir(dst))
	}
	if source != nil {
		if err := source.WaitCommitted(ctx); err != nil {
			s.log.Info("could not wait for the replica that sent a blob to commit it; committing it here unless storage holds it", "digest", f.digest, "error", err)
		}
	}
	// Replicas on one storage may fill the same blob at once (one that
	// fell back to the upstream while the blob's owner filled it, for
	// one): whoever commits second would upload the whole blob again for
	// nothing. What is stored under the digest was verified by whoever
	// committed it.
	if fi, err := s.driver.Stat(ctx, blobPath(f.digest)); err == nil && fi.Size() == f.written {
		return nil
	}
	tmp := uploadPath()
	w, err := s.driver.Writer(ctx, tmp, false)
	if err != nil {
		return s.notStored(err)
	}
	if _, err := io.Copy(w, io.NewSectionReader(f.spool, 0, f.written)); err != nil {
		_ = w.Cancel(ctx)
		return s.notStored(fmt.Errorf("writing %s to storage: %w", f.digest, err))
	}
	if err := w.Commit(ctx); err != nil {
		_ = w.Cancel(ctx)
		return s.notStored(fmt.Errorf("committing %s to storage: %w", f.digest, err))
	}
	if err := w.Close(); err != nil {
		return s.notStored(err)
	}
	if err := s.driver.Move(ctx, tmp, blobPath(f.digest)); err != nil {
		_ = s.driver.Delete(context.WithoutCancel(ctx), tmp)
		return s.notStored(err)
	}
	return nil
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
