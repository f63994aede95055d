package cache

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// GCReport is what one GC run removed, or with dryRun would remove.
type GCReport struct {
	// Marked counts the digests reached from tag records, pins and roots.
	Marked  int
	Removed []RemovedBlob
	// Bytes is the sum of the removed blobs' sizes.
	Bytes int64
	// Young counts the unreferenced blobs kept because they were committed
	// or read within the grace period.
	Young int
}

// RemovedBlob is one blob a GC run removed (or would remove).
type RemovedBlob struct {
	Digest digest.Digest
	Size   int64
}

// GC removes the committed blobs that nothing references and that were
// neither committed nor read within grace. References are marked from
// every tag record, every pin and Options.Roots, through each manifest's
// references (see mark), after the blobs were listed: a blob committed
// during the run is not a candidate, and one that a tag record written
// before the mark reaches is kept. The grace period covers the rest: a
// pull that fetched a manifest by digest (no tag record) and still has
// its layers to read, and content another process sharing the storage
// just committed. A blob being filled is not committed yet, so GC never
// sees it. With dryRun nothing is removed.
//
// An error while marking stops the run before anything is removed.
func (s *Store) GC(ctx context.Context, grace time.Duration, dryRun bool) (report GCReport, err error) {
	start := time.Now()
	defer func() {
		result := "ok"
		if err != nil {
			result = "failed"
		}
		s.metrics.gcRuns.WithLabelValues(result).Inc()
		s.metrics.gcDuration.Observe(time.Since(start).Seconds())
	}()
	// One pass at a time deletes blobs in this process.
	s.usage.evictMu.Lock()
	defer s.usage.evictMu.Unlock()

	candidates, err := s.listBlobs(ctx)
	if err != nil {
		return report, fmt.Errorf("listing blobs: %w", err)
	}
	roots, err := s.protectedRoots(ctx)
	if err != nil {
		return report, err
	}
	tagRoots, err := s.tagRoots(ctx)
	if err != nil {
		return report, err
	}
	marked := map[digest.Digest]bool{}
	if err := s.mark(ctx, append(roots, tagRoots...), marked); err != nil {
		return report, err
	}
	report.Marked = len(marked)

	cutoff := time.Now().Add(-grace)
	for _, c := range candidates {
		if err := ctx.Err(); err != nil {
			return report, err
		}
		if marked[c.Digest] {
			continue
		}
		if s.usedSince(c, cutoff) {
			report.Young++
			continue
		}
		if !dryRun {
			if _, removed := s.removeBlob(ctx, c.Digest, c.Size, reasonGC); !removed {
				continue // failed (logged), or removed by someone else
			}
		}
		report.Removed = append(report.Removed, RemovedBlob{Digest: c.Digest, Size: c.Size})
		report.Bytes += c.Size
	}
	return report, nil
}

// storedBlob is a committed blob as a walk of storage found it.
type storedBlob struct {
	RemovedBlob
	modTime time.Time
}

func (s *Store) listBlobs(ctx context.Context) ([]storedBlob, error) {
	var out []storedBlob
	err := s.driver.Walk(ctx, "/blobs", func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if fi.IsDir() {
			return nil
		}
		if d, ok := digestFromBlobPath(fi.Path()); ok {
			out = append(out, storedBlob{RemovedBlob{d, fi.Size()}, fi.ModTime()})
		}
		return nil
	})
	if isPathNotFound(err) {
		return nil, nil
	}
	return out, err
}

// usedSince reports whether b was committed, or read, after cutoff: its
// storage time, or the last read the leader's index knows (from every
// replica's journal), is newer.
func (s *Store) usedSince(b storedBlob, cutoff time.Time) bool {
	if b.modTime.After(cutoff) {
		return true
	}
	s.usage.mu.Lock()
	defer s.usage.mu.Unlock()
	if s.usage.index == nil {
		return false
	}
	e, ok := s.usage.index.get(keyOf(b.Digest))
	return ok && e.access > cutoff.UnixNano()
}

// tagRoots are the manifests of every tag record.
func (s *Store) tagRoots(ctx context.Context) ([]Root, error) {
	repos, err := s.Repositories(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing repositories: %w", err)
	}
	var roots []Root
	for _, full := range repos {
		registry, repo, _ := strings.Cut(full, "/")
		tags, err := s.Tags(ctx, registry, repo)
		if err != nil {
			return nil, fmt.Errorf("listing the tags of %s: %w", full, err)
		}
		for _, tag := range tags {
			t, err := s.GetTag(ctx, registry, repo, tag)
			if errors.Is(err, ErrNotFound) {
				continue // removed since the listing
			}
			if err != nil {
				return nil, fmt.Errorf("%w (remove %s from storage, or fix it, and run GC again)", err, path.Join(repoPath(registry, repo), "_tags", tag))
			}
			roots = append(roots, Root{Registry: registry, Repository: repo, Digest: t.Digest})
		}
	}
	return roots, nil
}

// gcOnce runs one GC pass of the schedule (storage.gc.interval).
func (s *Store) gcOnce(ctx context.Context) {
	start := time.Now()
	r, err := s.GC(ctx, s.gcGrace, false)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("garbage collection of the cache failed", "error", err, "removed", len(r.Removed))
		}
		return
	}
	s.log.Info("collected unreferenced blobs", "removed", len(r.Removed), "bytes", r.Bytes,
		"referenced", r.Marked, "youngerThanGrace", r.Young, "took", time.Since(start).Round(time.Millisecond))
}
