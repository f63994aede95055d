package cache

import (
	"context"
	"encoding/json"
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
	b, err := s.driver.GetContent(ctx, tagPath(registry, repo, tag))
	if isPathNotFound(err) {
		return Tag{}, ErrNotFound
	}
	if err != nil {
		return Tag{}, err
	}
	var t Tag
	if err := json.Unmarshal(b, &t); err != nil || t.Digest.Validate() != nil {
		return Tag{}, fmt.Errorf("tag record %s/%s:%s is corrupt", registry, repo, tag)
	}
	return t, nil
}

// PutTag records a tag resolution. Callers store the manifest first, so a
// record never points at content the cache lacks.
func (s *Store) PutTag(ctx context.Context, registry, repo, tag string, t Tag) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return s.putAtomic(ctx, tagPath(registry, repo, tag), b)
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
