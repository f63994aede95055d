package cache

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// sweepUploads removes what a crash (kill -9, power loss) left under
// uploads/ and in the spool directory: files not written for longer than
// the fill timeout. A running fill, this replica's or another's sharing
// the storage, writes its spool at least every stall timeout, so it is
// never that old.
func (s *Store) sweepUploads(ctx context.Context) {
	removed := 0
	before := time.Now().Add(-s.fillTimeout)
	if s.localRoot == "" {
		n, err := s.sweepDriverUploads(ctx, before)
		removed += n
		if err != nil && ctx.Err() == nil {
			s.log.Warn("removing stale uploads failed", "error", err)
		}
	}
	n, err := s.sweepDir(s.spoolDirectory(), before, s.localRoot == "")
	removed += n
	if err != nil && ctx.Err() == nil {
		s.log.Warn("removing stale spool files failed", "error", err)
	}
	if removed > 0 {
		s.log.Info("removed temporary files left by an earlier process", "files", removed, "olderThan", s.fillTimeout)
	}
}

// sweepDir removes the files in dir modified before before; onlySpools
// keeps to this package's spool files (dir may be the system temp dir).
func (s *Store) sweepDir(dir string, before time.Time, onlySpools bool) (int, error) {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, e := range entries {
		if e.IsDir() || (onlySpools && !strings.HasPrefix(e.Name(), spoolPrefix)) {
			continue
		}
		info, err := e.Info()
		if err != nil || !info.ModTime().Before(before) {
			continue
		}
		if os.Remove(filepath.Join(dir, e.Name())) == nil {
			removed++
			s.metrics.uploadsRemoved.WithLabelValues("stale").Inc()
		}
	}
	return removed, nil
}

// sweepDriverUploads removes the objects under /uploads of a storage that
// is not a local filesystem.
func (s *Store) sweepDriverUploads(ctx context.Context, before time.Time) (int, error) {
	var stale []string
	err := s.driver.Walk(ctx, "/uploads", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() && fi.ModTime().Before(before) {
			stale = append(stale, fi.Path())
		}
		return nil
	})
	if isPathNotFound(err) {
		return 0, nil
	}
	removed := 0
	for _, p := range stale {
		if s.driver.Delete(ctx, p) == nil {
			removed++
			s.metrics.uploadsRemoved.WithLabelValues("stale").Inc()
		}
	}
	return removed, err
}
