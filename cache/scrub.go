package cache

import (
	"context"
	"errors"
	"io"
	"path"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"
)

// ScrubReport is what one scrub pass found.
type ScrubReport struct {
	Blobs   int   // blobs re-hashed
	Bytes   int64 // bytes read
	Corrupt []digest.Digest
}

// Scrub re-hashes every committed blob (manifests included) and removes
// the ones whose bytes no longer match their digest; they are fetched
// again when next pulled. bytesPerSecond caps the read rate (0: no cap).
// Blobs removed or evicted while the pass runs are skipped.
func (s *Store) Scrub(ctx context.Context, bytesPerSecond int64) (ScrubReport, error) {
	limit := rate.NewLimiter(rate.Inf, 0)
	if bytesPerSecond > 0 {
		limit = rate.NewLimiter(rate.Limit(bytesPerSecond), int(min(bytesPerSecond, fillBufferSize)))
	}
	var report ScrubReport
	err := s.walkStoredBlobs(ctx, func(b storedBlob) error {
		dgst := b.key.digest()
		n, intact, err := s.hashStored(ctx, dgst, limit)
		report.Bytes += n
		s.metrics.scrubbedBytes.Add(float64(n))
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		report.Blobs++
		if !intact {
			if err := s.removeCorrupt(ctx, dgst, "scrub"); err != nil {
				return err
			}
			report.Corrupt = append(report.Corrupt, dgst)
		}
		return nil
	})
	return report, err
}

// scrubOnce runs one Scrub pass of the schedule (storage.scrub.interval).
func (s *Store) scrubOnce(ctx context.Context) {
	start := time.Now()
	r, err := s.Scrub(ctx, s.scrubRate)
	if err != nil && ctx.Err() == nil {
		s.log.Warn("scrub of the cache failed", "error", err)
	}
	s.log.Info("scrubbed the cache", "blobs", r.Blobs, "bytes", r.Bytes, "corrupt", len(r.Corrupt), "took", time.Since(start).Round(time.Second))
}

// every runs fn every interval until ctx ends; a run that overruns the
// interval delays the next instead of piling up.
func every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fn(ctx)
	}
}

// removeIfCorrupt re-hashes the stored blob and removes it when it does
// not match its digest; intact reports a match.
func (s *Store) removeIfCorrupt(ctx context.Context, dgst digest.Digest, limit *rate.Limiter, check string) (intact bool, err error) {
	_, intact, err = s.hashStored(ctx, dgst, limit)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil || intact {
		return intact, err
	}
	return false, s.removeCorrupt(ctx, dgst, check)
}

func (s *Store) removeCorrupt(ctx context.Context, dgst digest.Digest, check string) error {
	s.log.Error("cached blob is corrupt; removing it, it will be fetched again", "digest", dgst, "check", check)
	// The directory holds only this blob's data file.
	if err := s.driver.Delete(ctx, path.Dir(blobPath(dgst))); err != nil && !isPathNotFound(err) {
		return err
	}
	s.accountDelete(dgst)
	s.metrics.corruptRemoved.WithLabelValues(check).Inc()
	return nil
}

// hashStored reads the stored blob through limit (nil: no cap) and
// reports whether it matches its digest; ErrNotFound when it is gone.
func (s *Store) hashStored(ctx context.Context, dgst digest.Digest, limit *rate.Limiter) (n int64, intact bool, err error) {
	b, err := s.openBlob(ctx, dgst)
	if err != nil {
		return 0, false, err
	}
	defer b.Content.Close()
	digester := dgst.Algorithm().Digester()
	var src io.Reader = b.Content
	if limit != nil && limit.Limit() != rate.Inf {
		src = &limitedReader{ctx: ctx, r: b.Content, limit: limit}
	}
	n, err = io.Copy(digester.Hash(), src)
	if err != nil {
		return n, false, err
	}
	return n, digester.Digest() == dgst, nil
}

// limitedReader reads at most limit's rate.
type limitedReader struct {
	ctx   context.Context
	r     io.Reader
	limit *rate.Limiter
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if burst := l.limit.Burst(); len(p) > burst {
		p = p[:burst]
	}
	if err := l.limit.WaitN(l.ctx, len(p)); err != nil {
		return 0, err
	}
	return l.r.Read(p)
}
