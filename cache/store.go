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
	"path"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/registryname"
)

// ErrNotFound means the cache does not hold what was asked for.
var ErrNotFound = errors.New("not in cache")

// ErrDigestMismatch means content did not hash to the digest it was
// fetched or stored under; it was discarded.
var ErrDigestMismatch = errors.New("content does not match its digest")

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
	// MaxSizeBytes, when positive, makes Start evict the blobs read least
	// recently once the cache holds more than this.
	MaxSizeBytes int64
}

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
	// evictMinIdle: blobs read this recently are not evicted.
	evictMinIdle time.Duration
	usage        *usage
	scanned      chan struct{} // closed when Start's walk of storage ended

	mu    sync.Mutex
	fills map[digest.Digest]*Fill
}

// New returns a Store over driver.
func New(driver storagedriver.StorageDriver, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		driver:       driver,
		localRoot:    opts.LocalRoot,
		spoolDir:     opts.SpoolDir,
		log:          opts.Logger,
		fills:        map[digest.Digest]*Fill{},
		maxSize:      opts.MaxSizeBytes,
		evictMinIdle: defaultEvictMinIdle,
		usage:        newUsage(),
		scanned:      make(chan struct{}),
	}
	s.metrics = newMetrics(opts.Registerer)
	return s, nil
}

// Driver returns the storage driver, for components that keep their own
// state beside the cache (pins) and for readiness checks.
func (s *Store) Driver() storagedriver.StorageDriver { return s.driver }

// CheckWritable writes and removes a probe object; /readyz uses it.
func (s *Store) CheckWritable(ctx context.Context) error {
	p := "/uploads/readyz-" + randomID()
	if err := s.driver.PutContent(ctx, p, []byte("ok")); err != nil {
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
func (s *Store) putAtomic(ctx context.Context, p string, content []byte) error {
	tmp := uploadPath()
	if err := s.driver.PutContent(ctx, tmp, content); err != nil {
		return err
	}
	if err := s.driver.Move(ctx, tmp, p); err != nil {
		_ = s.driver.Delete(context.WithoutCancel(ctx), tmp)
		return err
	}
	return nil
}

func isPathNotFound(err error) bool {
	var pnf storagedriver.PathNotFoundError
	return errors.As(err, &pnf)
}
