package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// getJSON decodes the small JSON record at p into v: ErrNotFound when there
// is none, an error naming what when it does not decode.
func (s *Store) getJSON(ctx context.Context, p, what string, v any) error {
	b, err := s.readRecord(ctx, p)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w", what, err)
	}
	return nil
}

// readRecord reads the record at p, from memory within
// Options.RecordCacheTTL: ErrNotFound when there is none.
func (s *Store) readRecord(ctx context.Context, p string) ([]byte, error) {
	if s.records != nil {
		if b, found, ok := s.records.get(p); ok {
			if !found {
				return nil, ErrNotFound
			}
			return b, nil
		}
	}
	if s.records == nil {
		return s.fetchRecord(ctx, p)
	}
	// Many requests that miss the same record at once (the clients of a
	// cold image, whose links another replica wrote) share one read.
	return s.recordReads.Do(ctx, p, recordReadTimeout, func(ctx context.Context) ([]byte, error) {
		return s.fetchRecord(ctx, p)
	})
}

// recordReadTimeout bounds a read of a record that requests share.
const recordReadTimeout = 30 * time.Second

// fetchRecord reads the record at p from storage and remembers it.
func (s *Store) fetchRecord(ctx context.Context, p string) ([]byte, error) {
	b, err := s.driver.GetContent(ctx, p)
	if isPathNotFound(err) {
		s.rememberRecord(p, nil)
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	s.rememberRecord(p, b)
	return b, nil
}

// rememberRecord keeps what this Store read or wrote at p (nil: nothing is
// there), when records are cached.
func (s *Store) rememberRecord(p string, content []byte) {
	if s.records != nil {
		s.records.set(p, content)
	}
}

// putJSON stores v at p as JSON, atomically.
func (s *Store) putJSON(ctx context.Context, p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.putAtomic(ctx, p, b); err != nil {
		return err
	}
	s.rememberRecord(p, b)
	return nil
}
