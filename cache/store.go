// Package cache is pullbroker's content-addressed store over a distribution
// storage driver: blobs and manifests by digest, tag records, the links
// that say which repository is known to hold which digest, and fills that
// fetch a missing blob from upstream once for any number of readers.
//
// Nothing becomes visible under a digest before its bytes were verified
// against it.
package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/flight"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// ErrNotFound means the cache does not hold what was asked for.
var ErrNotFound = errors.New("not in cache")

// ErrNotStored means content could not be written to storage (no space
// left, a failing disk): nothing was cached. A manifest that PutManifest
// refuses with it was verified first, so it may still be served; a blob
// may be passed through with Stream.
var ErrNotStored = errors.New("content could not be stored in the cache")

// ErrTooManyFills means Options.MaxConcurrentFills fills are running and
// none of them is for this blob: retry shortly.
var ErrTooManyFills = errors.New("too many blob fills running")

// Options tune a Store.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// LocalRoot is the filesystem driver's root directory. When set, blobs
	// are served from local files (sendfile) and fills are committed by
	// rename.
	LocalRoot string
	// SpoolDir holds in-flight fills when LocalRoot is empty.
	SpoolDir string
	// MaxSizeBytes, when positive, makes Lead evict the blobs read least
	// recently once the cache (all of the storage) holds more than this. Pinned images, and
	// those Roots names, are never evicted.
	MaxSizeBytes int64
	// EvictMinIdle protects blobs read or committed this recently from
	// eviction. Default one minute; never less than three
	// AccountingIntervals, the time a read on another replica may take to
	// reach the leader.
	EvictMinIdle time.Duration
	// Roots names the manifests that eviction and GC must keep, with
	// everything they reference, besides the pins in storage (which the
	// Store finds itself): the lock files of locked rules. It is asked once
	// per eviction pass or GC run; an error stops the pass, evicting
	// nothing.
	Roots func(context.Context) ([]Root, error)
	// FillTimeout bounds one fill (or Stream) from the upstream request to
	// the commit; a spool file under uploads/ older than this is left by a
	// crash, and Start removes it. Default config.DefaultFillTimeout.
	FillTimeout time.Duration
	// FillStallTimeout cuts a fill that received less than stallMinBytes
	// within it. Default config.DefaultFillStallTimeout.
	FillStallTimeout time.Duration
	// MaxConcurrentFills caps the fills and Streams running at once.
	// Default config.DefaultMaxConcurrentFills.
	MaxConcurrentFills int
	// ScrubInterval, when positive, makes Lead re-hash every cached blob
	// this often, at ScrubBytesPerSecond, and remove corrupt ones.
	ScrubInterval       time.Duration
	ScrubBytesPerSecond int64
	// GCInterval, when positive, makes Lead run GC this often with
	// GCGrace.
	GCInterval time.Duration
	GCGrace    time.Duration
	// RecordCacheTTL, when positive, keeps pins, tag records and links in
	// memory this long, and verified manifest bodies until the memory
	// bound: a pinned or fresh tag then costs no storage request. A change
	// made by another process sharing the storage is seen within it.
	RecordCacheTTL time.Duration
	// Replica names this process among those sharing the storage: its
	// journal objects are cluster/journal/<Replica>/. Default: the host
	// name.
	Replica string
	// AccountingInterval is how often Start writes this replica's journal
	// and reads the cluster's cache size, and how often Lead merges the
	// journals and publishes the size. Default
	// config.DefaultAccountingInterval.
	AccountingInterval time.Duration
}

// manifestBodiesBytes bounds the memory of cached manifest bodies.
const manifestBodiesBytes = 32 << 20

// Store is the cache. It is safe for concurrent use, and several processes
// may share one storage backend: every object is written under a temporary
// name and moved into place.
type Store struct {
	driver    storagedriver.StorageDriver
	localRoot string
	spoolDir  string
	log       *slog.Logger
	metrics   *metrics
	maxSize   int64
	roots     func(context.Context) ([]Root, error)
	// evictMinIdle: blobs read this recently are not evicted.
	evictMinIdle       time.Duration
	usage              *usage
	journal            *journal
	replica            string
	accountingInterval time.Duration
	// sharing counts Start's goroutines that write to storage.
	sharing sync.WaitGroup

	fillTimeout      time.Duration
	fillStallTimeout time.Duration
	// fillSlots holds a token for each fill or Stream running.
	fillSlots     chan struct{}
	scrubInterval time.Duration
	scrubRate     int64
	gcInterval    time.Duration
	gcGrace       time.Duration
	// fullUntil (unix nanoseconds): storage ran out of space recently;
	// until then no fill is started, blobs are streamed uncached.
	fullUntil atomic.Int64

	// records and manifests are nil unless Options.RecordCacheTTL is set.
	records   *recordCache
	manifests *manifestBodies
	// recordReads shares the reads of a record that the cache misses.
	recordReads flight.Group[[]byte]

	mu    sync.Mutex
	fills map[digest.Digest]*Fill
	// commits are the blobs this store's fills committed lately.
	commits recentCommits
}

// New returns a Store over driver.
func New(driver storagedriver.StorageDriver, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.FillTimeout <= 0 {
		opts.FillTimeout = config.DefaultFillTimeout
	}
	if opts.FillStallTimeout <= 0 {
		opts.FillStallTimeout = config.DefaultFillStallTimeout
	}
	if opts.MaxConcurrentFills <= 0 {
		opts.MaxConcurrentFills = config.DefaultMaxConcurrentFills
	}
	if opts.EvictMinIdle <= 0 {
		opts.EvictMinIdle = defaultEvictMinIdle
	}
	if opts.AccountingInterval <= 0 {
		opts.AccountingInterval = config.DefaultAccountingInterval
	}
	if opts.Replica == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("naming this replica: set cluster.name (%w)", err)
		}
		opts.Replica = host
	}
	if !replicaName.MatchString(opts.Replica) {
		return nil, fmt.Errorf("replica name %q: must be letters, digits, '.', '_' and '-', starting with a letter or digit (set cluster.name)", opts.Replica)
	}
	s := &Store{
		driver:             driver,
		localRoot:          opts.LocalRoot,
		spoolDir:           opts.SpoolDir,
		log:                opts.Logger,
		fills:              map[digest.Digest]*Fill{},
		maxSize:            opts.MaxSizeBytes,
		roots:              opts.Roots,
		evictMinIdle:       max(opts.EvictMinIdle, evictMinIdleIntervals*opts.AccountingInterval),
		usage:              newUsage(),
		journal:            newJournal(),
		replica:            opts.Replica,
		accountingInterval: opts.AccountingInterval,

		fillTimeout:      opts.FillTimeout,
		fillStallTimeout: opts.FillStallTimeout,
		fillSlots:        make(chan struct{}, opts.MaxConcurrentFills),
		scrubInterval:    opts.ScrubInterval,
		scrubRate:        opts.ScrubBytesPerSecond,
		gcInterval:       opts.GCInterval,
		gcGrace:          opts.GCGrace,
	}
	if opts.RecordCacheTTL > 0 {
		s.records = newRecordCache(opts.RecordCacheTTL)
		s.manifests = newManifestBodies(manifestBodiesBytes)
	}
	s.metrics = newMetrics(opts.Registerer)
	return s, nil
}

// CheckWritable writes and removes a probe object; /readyz uses it. A
// failed probe leaves nothing behind.
func (s *Store) CheckWritable(ctx context.Context) error {
	p := "/uploads/readyz-" + randomID()
	if err := s.putAtomic(ctx, p, []byte("ok")); err != nil {
		return fmt.Errorf("storage %s is not writable: %w", s.driver.Name(), err)
	}
	return s.driver.Delete(ctx, p)
}

// Object paths. Repository components never start with "_" in the OCI
// name grammar, so "_tags" and "_links" cannot collide with a repository.
func blobPath(d digest.Digest) string {
	return path.Join("/blobs", d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
}

func repoPath(registry, repo string) string {
	return path.Join("/repos", registryComponent(registry), repo)
}

// registryComponent writes the registry the way the image-prefix form does
// ("host_5000" for "host:5000": driver paths, like repository names, allow
// no ':'), so the catalog lists names clients can pull by. config refuses
// upstream names that cannot be written so.
func registryComponent(registry string) string {
	if c, err := registryname.ToPathComponent(registry); err == nil {
		return c
	}
	return registry
}

func linkPath(registry, repo string, d digest.Digest) string {
	return path.Join(repoPath(registry, repo), "_links", d.Algorithm().String(), d.Encoded())
}

func tagPath(registry, repo, tag string) string {
	return path.Join(repoPath(registry, repo), "_tags", tag)
}

func uploadPath() string { return "/uploads/" + randomID() }

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// putAtomic writes content under a temporary name and moves it into place,
// so a reader (in this or another replica) never sees a partial object.
// A failed write is ErrNotStored and leaves no temporary object behind;
// one that failed for want of space holds back fills for a while.
func (s *Store) putAtomic(ctx context.Context, p string, content []byte) error {
	if err := s.putAtomicOnce(ctx, p, content); err != nil {
		return s.notStored(err)
	}
	return nil
}

func (s *Store) putAtomicOnce(ctx context.Context, p string, content []byte) error {
	if s.localRoot != "" {
		// The filesystem driver's PutContent leaves its own temporary
		// file behind when the final flush fails (a full disk): write
		// the local file directly instead.
		return s.putLocal(p, content)
	}
	tmp := uploadPath()
	if err := s.driver.PutContent(ctx, tmp, content); err != nil {
		_ = s.driver.Delete(context.WithoutCancel(ctx), tmp)
		return err
	}
	if err := s.driver.Move(ctx, tmp, p); err != nil {
		_ = s.driver.Delete(context.WithoutCancel(ctx), tmp)
		return err
	}
	return nil
}

// putLocal writes a file under uploads/, syncs it and renames it into
// place; on any error the temporary file is removed.
func (s *Store) putLocal(p string, content []byte) (err error) {
	dir := s.localPath("/uploads")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "put-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(content); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	dst := s.localPath(p)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// syncDir makes a rename into dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func isPathNotFound(err error) bool {
	var pnf storagedriver.PathNotFoundError
	return errors.As(err, &pnf)
}
