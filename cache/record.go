package cache

import (
	"context"
	"encoding/json"
	"fmt"
)

// getJSON decodes the small JSON record at p into v: ErrNotFound when there
// is none, an error naming what when it does not decode.
func (s *Store) getJSON(ctx context.Context, p, what string, v any) error {
	b, err := s.driver.GetContent(ctx, p)
	if isPathNotFound(err) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s is corrupt: %w", what, err)
	}
	return nil
}

// putJSON stores v at p as JSON, atomically.
func (s *Store) putJSON(ctx context.Context, p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.putAtomic(ctx, p, b)
}
