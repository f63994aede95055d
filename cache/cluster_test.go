package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// clusterInterval is the accounting interval of the replicas in these tests.
const clusterInterval = 50 * time.Millisecond

// replicas are Stores sharing one filesystem directory, as replicas share
// a bucket.
type replicas struct {
	root   string
	driver storagedriver.StorageDriver
}

func newReplicas(t *testing.T) *replicas {
	root := t.TempDir()
	return &replicas{root: root, driver: filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})}
}

// open returns the replica name, over driver (nil: the shared one, as
// a local filesystem).
func (r *replicas) open(t *testing.T, name string, driver storagedriver.StorageDriver, opts Options) *Store {
	t.Helper()
	opts.Replica, opts.AccountingInterval, opts.Registerer = name, clusterInterval, prometheus.NewRegistry()
	if driver == nil {
		driver, opts.LocalRoot = r.driver, r.root
	} else {
		opts.SpoolDir = t.TempDir()
	}
	s, err := New(driver, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// committedLongAgo stores content as a blob that an earlier process
// committed an hour ago.
func (r *replicas) committedLongAgo(t *testing.T, content []byte) digest.Digest {
	t.Helper()
	s := r.open(t, "earlier", nil, Options{})
	d := fillBlob(t, s, content)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(s.localPath(blobPath(d)), old, old); err != nil {
		t.Fatal(err)
	}
	return d
}

func read(t *testing.T, s *Store, d digest.Digest) {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), d, -1)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
}

// indexed is the leader's entry for d.
func indexed(s *Store, d digest.Digest) (blobEntry, bool) {
	s.usage.mu.Lock()
	defer s.usage.mu.Unlock()
	if s.usage.index == nil {
		return blobEntry{}, false
	}
	return s.usage.index.get(keyOf(d))
}

// TestLeaderIndexesWhatOtherReplicasCommitAndRead: a blob committed and
// read through B reaches the leader A's index with B's next journal; a
// read still in progress keeps it fresh; the journal objects are consumed.
func TestLeaderIndexesWhatOtherReplicasCommitAndRead(t *testing.T) {
	r := newReplicas(t)
	a, b := r.open(t, "a", nil, Options{}), r.open(t, "b", nil, Options{})
	start(t, a)
	lead(t, a)
	start(t, b)

	d := fillBlob(t, b, randomBytes(t, 1234))
	waitFor(t, "B's commit in A's index", func() bool {
		e, ok := indexed(a, d)
		return ok && e.size == 1234
	})

	blob, err := b.OpenBlob(t.Context(), d, -1)
	if err != nil {
		t.Fatal(err)
	}
	opened := time.Now()
	waitFor(t, "B's read still in progress reported after it began", func() bool {
		e, _ := indexed(a, d)
		return e.access > opened.Add(3*clusterInterval).UnixNano()
	})
	blob.Close()

	waitFor(t, "the journal objects consumed", func() bool { return len(journalObjects(t, r.driver)) == 0 })
}

// journalObjects lists the journal objects in storage.
func journalObjects(t *testing.T, driver storagedriver.StorageDriver) []string {
	t.Helper()
	var objects []string
	err := driver.Walk(t.Context(), journalRoot, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			objects = append(objects, fi.Path())
		}
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		t.Fatal(err)
	}
	return objects
}

// TestLeaderEvictsForTheCluster: A leads with storage.maxSizeBytes; a
// commit through B takes the cache over the limit: A evicts the blob
// nobody read, and spares the one B read and the one B committed. B's
// size metrics then agree with A's, from cluster/usage.
func TestLeaderEvictsForTheCluster(t *testing.T) {
	r := newReplicas(t)
	a := r.open(t, "a", nil, Options{MaxSizeBytes: 2500})
	b := r.open(t, "b", nil, Options{})
	readByB := r.committedLongAgo(t, randomBytes(t, 1000))
	unread := r.committedLongAgo(t, randomBytes(t, 1000))
	start(t, a)
	lead(t, a)
	start(t, b)

	read(t, b, readByB)
	committedByB := fillBlob(t, b, randomBytes(t, 1000)) // 3000 > 2500

	waitFor(t, "an eviction", func() bool { return testutil.ToFloat64(a.metrics.evictions.WithLabelValues(reasonSize)) == 1 })
	if holds(t, a, unread) {
		t.Error("the blob nobody read is still stored")
	}
	for _, d := range []digest.Digest{readByB, committedByB} {
		if !holds(t, a, d) {
			t.Errorf("blob %s evicted although B used it within evictMinIdle", d)
		}
	}
	waitFor(t, "B's size metrics equal to A's", func() bool {
		return testutil.ToFloat64(b.metrics.sizeBytes) == 2000 && testutil.ToFloat64(a.metrics.sizeBytes) == 2000 &&
			testutil.ToFloat64(b.metrics.objects) == 2 && testutil.ToFloat64(a.metrics.objects) == 2
	})
	if got := testutil.ToFloat64(b.metrics.evictions.WithLabelValues(reasonSize)); got != 0 {
		t.Errorf("B evicted %v blobs; only the leader evicts", got)
	}
}

// TestLeadEndsEviction: once Lead's context ended the Store evicts nothing
// more and holds no index, however far over the limit the cache grows.
func TestLeadEndsEviction(t *testing.T) {
	r := newReplicas(t)
	a := r.open(t, "a", nil, Options{MaxSizeBytes: 1500})
	a.evictMinIdle = 0
	start(t, a)
	stop := lead(t, a)
	stop()
	if _, ok := indexed(a, digest.FromString("anything")); ok || a.usage.index != nil {
		t.Fatal("the index was kept after leading ended")
	}

	blobs := []digest.Digest{fillBlob(t, a, randomBytes(t, 1000)), fillBlob(t, a, randomBytes(t, 1000)), fillBlob(t, a, randomBytes(t, 1000))}
	time.Sleep(5 * clusterInterval)
	for _, d := range blobs {
		if !holds(t, a, d) {
			t.Errorf("blob %s evicted after leading ended", d)
		}
	}
	if got := testutil.ToFloat64(a.metrics.evictions.WithLabelValues(reasonSize)); got != 0 {
		t.Errorf("%v evictions after leading ended", got)
	}
}

// writeCountingDriver records the storage writes of a Store.
type writeCountingDriver struct {
	storagedriver.StorageDriver
	mu     sync.Mutex
	writes []string
}

func (c *writeCountingDriver) wrote(op, p string) {
	c.mu.Lock()
	c.writes = append(c.writes, op+" "+p)
	c.mu.Unlock()
}

func (c *writeCountingDriver) PutContent(ctx context.Context, p string, content []byte) error {
	c.wrote("put", p)
	return c.StorageDriver.PutContent(ctx, p, content)
}

func (c *writeCountingDriver) Writer(ctx context.Context, p string, append bool) (storagedriver.FileWriter, error) {
	c.wrote("write", p)
	return c.StorageDriver.Writer(ctx, p, append)
}

func (c *writeCountingDriver) Move(ctx context.Context, from, to string) error {
	c.wrote("move", to)
	return c.StorageDriver.Move(ctx, from, to)
}

func (c *writeCountingDriver) Delete(ctx context.Context, p string) error {
	c.wrote("delete", p)
	return c.StorageDriver.Delete(ctx, p)
}

func (c *writeCountingDriver) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writes
	c.writes = nil
	return w
}

// TestReadsCostOneJournalObjectPerInterval: 1,000 reads on a replica whose
// storage is not a local filesystem write nothing to storage; its next
// journal flush writes one object (an upload moved into place), whatever
// the number of reads, and a flush with nothing to report writes nothing.
func TestReadsCostOneJournalObjectPerInterval(t *testing.T) {
	r := newReplicas(t)
	counting := &writeCountingDriver{StorageDriver: r.driver}
	b := r.open(t, "b", counting, Options{})
	blobs := []digest.Digest{fillBlob(t, b, randomBytes(t, 100)), fillBlob(t, b, randomBytes(t, 200))}
	flush(t, b)
	counting.take()

	for i := range 1000 {
		read(t, b, blobs[i%len(blobs)])
	}
	if w := counting.take(); len(w) != 0 {
		t.Fatalf("1,000 reads wrote to storage: %v", w)
	}
	flush(t, b)
	w := counting.take()
	if len(w) != 2 || !strings.HasPrefix(w[0], "put /uploads/") || !strings.HasPrefix(w[1], "move "+journalRoot+"/b/") {
		t.Fatalf("a flush after 1,000 reads wrote %v, want one journal object under %s/b/", w, journalRoot)
	}
	flush(t, b)
	if w := counting.take(); len(w) != 0 {
		t.Fatalf("a flush with nothing to report wrote %v", w)
	}
}

// TestLeaderEvictsWhatItsWalkFindsOverTheLimit: a replica that starts
// leading over a cache already over storage.maxSizeBytes evicts without
// waiting for a commit.
func TestLeaderEvictsWhatItsWalkFindsOverTheLimit(t *testing.T) {
	r := newReplicas(t)
	for range 3 {
		r.committedLongAgo(t, randomBytes(t, 1000))
	}
	a := r.open(t, "a", nil, Options{MaxSizeBytes: 2500})
	lead(t, a)
	waitFor(t, "an eviction", func() bool { return testutil.ToFloat64(a.metrics.evictions.WithLabelValues(reasonSize)) == 1 })
}

func flush(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestCommandDeletionsReachTheLeader: what a process that does not run
// Start (pullbroker gc) removes leaves the leader's index with its Flush.
func TestCommandDeletionsReachTheLeader(t *testing.T) {
	r := newReplicas(t)
	unreferenced := r.committedLongAgo(t, randomBytes(t, 1000))
	a := r.open(t, "a", nil, Options{})
	lead(t, a)
	if _, ok := indexed(a, unreferenced); !ok {
		t.Fatal("the leader's walk missed a blob")
	}

	gc := r.open(t, "gc", nil, Options{})
	report, err := gc.GC(t.Context(), time.Minute, false)
	if err != nil || len(report.Removed) != 1 {
		t.Fatalf("GC removed %v (%v), want the unreferenced blob", report.Removed, err)
	}
	flush(t, gc)
	waitFor(t, "the removal in the leader's index", func() bool {
		_, ok := indexed(a, unreferenced)
		return !ok && testutil.ToFloat64(a.metrics.objects) == 0
	})
}

// TestEvictMinIdleExceedsTheJournalLag: a read reaches the leader within
// two accounting intervals; eviction spares blobs read within at least
// three.
func TestEvictMinIdleExceedsTheJournalLag(t *testing.T) {
	for interval, want := range map[time.Duration]time.Duration{
		10 * time.Second: time.Minute,
		time.Minute:      3 * time.Minute,
	} {
		s, err := New(newReplicas(t).driver, Options{Replica: "a", AccountingInterval: interval})
		if err != nil {
			t.Fatal(err)
		}
		if s.evictMinIdle != want {
			t.Errorf("accounting interval %s: evictMinIdle %s, want %s", interval, s.evictMinIdle, want)
		}
	}
	if _, err := New(newReplicas(t).driver, Options{Replica: "a/b"}); err == nil || !strings.Contains(err.Error(), "cluster.name") {
		t.Errorf("a replica name that is no path component: %v, want an error naming cluster.name", err)
	}
}

// TestFillOfABlobAnotherReplicaCommittedUploadsNothing: a replica whose
// fill of a blob ends after another replica committed that blob to the
// shared storage (as a replica streaming it from the owner does) serves its
// readers and writes nothing: the blob is stored once.
func TestFillOfABlobAnotherReplicaCommittedUploadsNothing(t *testing.T) {
	r := newReplicas(t)
	counting := &writeCountingDriver{StorageDriver: r.driver}
	b := r.open(t, "b", counting, Options{})
	content := randomBytes(t, 300)
	dgst := digest.FromBytes(content)
	release := make(chan struct{})
	f, cached, err := b.Fill(dgst, int64(len(content)), func(context.Context) (io.ReadCloser, int64, error) {
		<-release
		return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
	})
	if err != nil || cached {
		t.Fatalf("Fill on b: cached %v, %v", cached, err)
	}
	fillBlob(t, r.open(t, "a", nil, Options{}), content)
	close(release)
	if err := f.Done(t.Context()); err != nil {
		t.Fatal(err)
	}
	if w := counting.take(); len(w) != 0 {
		t.Fatalf("b's fill of a blob a had committed wrote %v, want nothing", w)
	}
	blob, err := b.OpenBlob(t.Context(), dgst, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	if got, err := io.ReadAll(blob.Content); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("b reads %d bytes (%v), want the %d committed", len(got), err, len(content))
	}
}

// replicaSource is a body from another replica, which commits the blob
// itself when commit is called, before WaitCommitted returns, or fails to
// say so. It keeps what the fill rejected.
type replicaSource struct {
	io.Reader
	commit   func() error
	rejected error
}

func (s *replicaSource) Close() error                        { return nil }
func (s *replicaSource) WaitCommitted(context.Context) error { return s.commit() }
func (s *replicaSource) Rejected(err error)                  { s.rejected = err }

// TestWrongBytesFromAReplicaAreRejected: bytes from another replica that
// do not match the digest fail a fill and an uncached stream alike, and
// the replica that sent them is told.
func TestWrongBytesFromAReplicaAreRejected(t *testing.T) {
	r := newReplicas(t)
	s := r.open(t, "b", &writeCountingDriver{StorageDriver: r.driver}, Options{})
	want := randomBytes(t, 300)
	dgst := digest.FromBytes(want)
	lie := func() (*replicaSource, Fetcher) {
		src := &replicaSource{Reader: bytes.NewReader(randomBytes(t, 300)), commit: func() error { return nil }}
		return src, func(context.Context) (io.ReadCloser, int64, error) { return src, 300, nil }
	}

	src, fetch := lie()
	f, _, err := s.FillAbsent(dgst, 300, fetch)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Done(t.Context()); !errors.Is(err, oci.ErrDigestMismatch) {
		t.Fatalf("fill of wrong bytes: %v, want a digest mismatch", err)
	}
	if !errors.Is(src.rejected, oci.ErrDigestMismatch) {
		t.Errorf("the fill told the replica that sent wrong bytes %v, want a digest mismatch", src.rejected)
	}

	src, fetch = lie()
	body, _, err := s.Stream(t.Context(), dgst, 300, fetch)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if _, err := io.ReadAll(body); !errors.Is(err, oci.ErrDigestMismatch) {
		t.Fatalf("stream of wrong bytes: %v, want a digest mismatch", err)
	}
	if !errors.Is(src.rejected, oci.ErrDigestMismatch) {
		t.Errorf("the stream told the replica that sent wrong bytes %v, want a digest mismatch", src.rejected)
	}
}

// TestFillWaitsForItsSourceToCommit: a fill that streamed a blob from a
// source that commits it too (the blob's owner among the replicas) waits
// for that commit and writes nothing; when the source cannot say, or did
// not store the blob, the fill writes it.
func TestFillWaitsForItsSourceToCommit(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ownerCommit bool
		answer      error
		wantWrites  bool
	}{
		{"the source committed", true, nil, false},
		{"the source's fill failed", false, nil, true},
		{"the source cannot be asked", false, errors.New("connection refused"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReplicas(t)
			counting := &writeCountingDriver{StorageDriver: r.driver}
			b := r.open(t, "b", counting, Options{})
			owner := r.open(t, "a", nil, Options{})
			content := randomBytes(t, 300)
			dgst := digest.FromBytes(content)
			source := &replicaSource{Reader: bytes.NewReader(content), commit: func() error {
				if tc.ownerCommit {
					fillBlob(t, owner, content)
				}
				return tc.answer
			}}
			f, cached, err := b.FillAbsent(dgst, int64(len(content)), func(context.Context) (io.ReadCloser, int64, error) {
				return source, int64(len(content)), nil
			})
			if err != nil || cached {
				t.Fatalf("FillAbsent: cached %v, %v", cached, err)
			}
			if err := f.Done(t.Context()); err != nil {
				t.Fatal(err)
			}
			if w := counting.take(); (len(w) != 0) != tc.wantWrites {
				t.Errorf("the fill wrote %v; want writes: %v", w, tc.wantWrites)
			}
			if !holds(t, b, dgst) {
				t.Error("storage does not hold the blob after the fill")
			}
		})
	}
}

// statCountingDriver counts the looks at blobs in storage.
type statCountingDriver struct {
	storagedriver.StorageDriver
	stats atomic.Int64
}

func (d *statCountingDriver) Stat(ctx context.Context, p string) (storagedriver.FileInfo, error) {
	if strings.HasPrefix(p, "/blobs/") {
		d.stats.Add(1)
	}
	return d.StorageDriver.Stat(ctx, p)
}

// TestFillAbsentLooksOnlyAfterARecentCommit: FillAbsent, told that
// storage lacked the blob a moment ago, starts the fetch without looking
// again, unless a fill of this store committed the blob lately: then the
// miss it was told of may be older than that commit, and it looks.
func TestFillAbsentLooksOnlyAfterARecentCommit(t *testing.T) {
	r := newReplicas(t)
	counting := &statCountingDriver{StorageDriver: r.driver}
	s := r.open(t, "a", counting, Options{})
	content := randomBytes(t, 300)
	dgst := digest.FromBytes(content)
	fetches := 0
	// The fetch waits for the count below: the fill's commit, which may
	// run as soon as FillAbsent returns, looks at storage too.
	counted := make(chan struct{})
	fetch := func(context.Context) (io.ReadCloser, int64, error) {
		<-counted
		fetches++
		return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
	}
	before := counting.stats.Load()
	f, cached, err := s.FillAbsent(dgst, int64(len(content)), fetch)
	if err != nil || cached {
		t.Fatalf("FillAbsent of a new blob: cached %v, %v", cached, err)
	}
	if n := counting.stats.Load() - before; n != 0 {
		t.Errorf("FillAbsent of a new blob looked at storage %d times before the fetch, want 0", n)
	}
	close(counted)
	if err := f.Done(t.Context()); err != nil {
		t.Fatal(err)
	}
	// A caller that saw the miss just before that commit.
	f, cached, err = s.FillAbsent(dgst, int64(len(content)), fetch)
	if err != nil || !cached {
		t.Fatalf("FillAbsent right after this store committed the blob: fill %v, cached %v, %v; want cached", f != nil, cached, err)
	}
	if fetches != 1 {
		t.Errorf("%d fetches, want 1", fetches)
	}
}

func TestRecentCommitsForgetAfterTheWindow(t *testing.T) {
	var r recentCommits
	now := time.Now()
	a, b := digest.FromString("a"), digest.FromString("b")
	r.add(a, now)
	r.add(b, now.Add(recentCommitWindow/2))
	r.add(a, now.Add(recentCommitWindow/2)) // committed again after an eviction
	later := now.Add(recentCommitWindow + time.Second)
	r.add(digest.FromString("c"), later)
	if !r.has(a, later) || !r.has(b, later) {
		t.Error("commits within the window were forgotten")
	}
	if len(r.queue) != 3 {
		t.Errorf("queue holds %d commits, want the 3 within the window", len(r.queue))
	}
	if r.has(a, now.Add(2*recentCommitWindow)) {
		t.Error("a commit older than the window is still remembered")
	}
}
