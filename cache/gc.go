package cache

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

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
// references (see mark); then a walk of storage removes what is not
// marked as it goes, holding no list of the blobs. A blob committed
// during the run, and one that a tag record written after the mark
// reaches, is younger than grace, and kept; grace also covers a pull that
// fetched a manifest by digest (no tag record) and still has its layers
// to read, and content another process sharing the storage just
// committed. A blob being filled is not committed yet, so GC never sees
// it. With dryRun nothing is removed.
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

	cutoff := start.Add(-grace)
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

	err = s.walkStoredBlobs(ctx, func(b storedBlob) error {
		dgst := b.key.digest()
		if marked[dgst] {
			return nil
		}
		if s.usedSince(b, cutoff) {
			report.Young++
			return nil
		}
		if !dryRun {
			if _, removed := s.removeBlob(ctx, dgst, b.size, reasonGC); !removed {
				return nil // failed (logged), or removed by someone else
			}
		}
		report.Removed = append(report.Removed, RemovedBlob{Digest: dgst, Size: b.size})
		report.Bytes += b.size
		return nil
	})
	if err != nil {
		return report, fmt.Errorf("walking the blobs: %w", err)
	}
	return report, nil
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
	e, ok := s.usage.index.get(b.key)
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
