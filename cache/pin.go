package cache

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Pin binds a tag to a digest until someone changes it on purpose. Pins
// live in the storage backend, so replicas sharing it share them and they
// survive restarts.
type Pin struct {
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType,omitempty"`
	// Policy is what created the pin: "sticky" (first resolution kept),
	// "manual" (set by an operator, sync or import).
	Policy   string    `json:"policy"`
	PinnedAt time.Time `json:"pinnedAt"`
}

// Image is the pinned reference as clients pull it.
func (p Pin) Image() string { return p.Registry + "/" + p.Repository + ":" + p.Tag }

func pinPath(registry, repo, tag string) string {
	return path.Join(repoPath(registry, repo), "_pins", tag)
}

// GetPin returns the pin of a tag, or ErrNotFound.
func (s *Store) GetPin(ctx context.Context, registry, repo, tag string) (Pin, error) {
	var p Pin
	what := fmt.Sprintf("pin %s/%s:%s", registry, repo, tag)
	if err := s.getJSON(ctx, pinPath(registry, repo, tag), what, &p); err != nil {
		return Pin{}, err
	}
	if err := p.Digest.Validate(); err != nil {
		return Pin{}, fmt.Errorf("%s is corrupt: %w", what, err)
	}
	return p, nil
}

// PutPin stores a pin.
func (s *Store) PutPin(ctx context.Context, p Pin) error {
	if err := p.Digest.Validate(); err != nil {
		return fmt.Errorf("pin %s: %w", p.Image(), err)
	}
	if err := s.putJSON(ctx, pinPath(p.Registry, p.Repository, p.Tag), p); err != nil {
		return err
	}
	s.accountPin(p.Image(), p.Policy)
	return nil
}

// DeletePin removes a pin; removing one that does not exist is not an error.
func (s *Store) DeletePin(ctx context.Context, registry, repo, tag string) error {
	err := s.driver.Delete(ctx, pinPath(registry, repo, tag))
	s.rememberRecord(pinPath(registry, repo, tag), nil)
	if err != nil && !isPathNotFound(err) {
		return err
	}
	s.accountPin(Pin{Registry: registry, Repository: repo, Tag: tag}.Image(), "")
	return nil
}

// Pins lists every pin, sorted by image.
func (s *Store) Pins(ctx context.Context) ([]Pin, error) {
	repos, err := s.Repositories(ctx)
	if err != nil {
		return nil, err
	}
	var out []Pin
	for _, full := range repos {
		registry, repo, _ := strings.Cut(full, "/")
		entries, err := s.driver.List(ctx, path.Join(repoPath(registry, repo), "_pins"))
		if isPathNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			p, err := s.GetPin(ctx, registry, repo, path.Base(e))
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Image() < out[j].Image() })
	return out, nil
}
