package cache

import (
	"context"
	"fmt"
	"path"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// Tag is what the cache knows of a tag: the manifest it resolved to and
// when the upstream last confirmed that.
type Tag struct {
	Digest      digest.Digest `json:"digest"`
	MediaType   string        `json:"mediaType"`
	Size        int64         `json:"size"`
	ConfirmedAt time.Time     `json:"confirmedAt"`
}

// Fresh reports whether the record may be answered without asking the
// upstream.
func (t Tag) Fresh(ttl time.Duration, now time.Time) bool {
	return now.Sub(t.ConfirmedAt) < ttl
}

// GetTag returns the tag record, or ErrNotFound.
func (s *Store) GetTag(ctx context.Context, registry, repo, tag string) (Tag, error) {
	var t Tag
	what := fmt.Sprintf("tag record %s/%s:%s", registry, repo, tag)
	if err := s.getJSON(ctx, tagPath(registry, repo, tag), what, &t); err != nil {
		return Tag{}, err
	}
	if err := t.Digest.Validate(); err != nil {
		return Tag{}, fmt.Errorf("%s is corrupt: %w", what, err)
	}
	return t, nil
}

// PutTag records a tag resolution. Callers store the manifest first, so a
// record never points at content the cache lacks.
func (s *Store) PutTag(ctx context.Context, registry, repo, tag string, t Tag) error {
	return s.putJSON(ctx, tagPath(registry, repo, tag), t)
}

// Tags lists the tags the cache holds records for, sorted.
func (s *Store) Tags(ctx context.Context, registry, repo string) ([]string, error) {
	entries, err := s.driver.List(ctx, path.Join(repoPath(registry, repo), "_tags"))
	if isPathNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tags := make([]string, 0, len(entries))
	for _, e := range entries {
		tags = append(tags, path.Base(e))
	}
	sort.Strings(tags)
	return tags, nil
}
