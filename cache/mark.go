package cache

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Root is a manifest that must stay cached with everything it references:
// the repository names where to find the media type it was served with.
type Root struct {
	Registry   string
	Repository string
	Digest     digest.Digest
}

// pinRoots are the manifests of every pin in storage.
func (s *Store) pinRoots(ctx context.Context) ([]Root, error) {
	pins, err := s.Pins(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing pins: %w", err)
	}
	roots := make([]Root, 0, len(pins))
	for _, p := range pins {
		roots = append(roots, Root{Registry: p.Registry, Repository: p.Repository, Digest: p.Digest})
	}
	return roots, nil
}

// protectedRoots are the roots eviction must keep: every pin in storage
// and what Options.Roots adds (the lock files of locked rules).
func (s *Store) protectedRoots(ctx context.Context) ([]Root, error) {
	roots, err := s.pinRoots(ctx)
	if err != nil {
		return nil, err
	}
	if s.roots != nil {
		extra, err := s.roots(ctx)
		if err != nil {
			return nil, err
		}
		roots = append(roots, extra...)
	}
	return roots, nil
}

// mark adds to marked each root and everything it references, recursively
// (an index's manifests, each manifest's config and layers, subjects), by
// the rules references() applies when a manifest is stored. Only manifests
// are read; a referenced manifest the cache does not hold marks nothing
// below it (it is fetched again, with what it references, when pulled).
func (s *Store) mark(ctx context.Context, roots []Root, marked map[digest.Digest]bool) error {
	for _, r := range roots {
		if marked[r.Digest] {
			continue
		}
		mediaType := ""
		l, err := s.GetLink(ctx, r.Registry, r.Repository, r.Digest)
		switch {
		case err == nil:
			mediaType = l.MediaType
		case !errors.Is(err, ErrNotFound):
			return err
		}
		if err := s.markManifest(ctx, r.Digest, mediaType, marked); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) markManifest(ctx context.Context, dgst digest.Digest, mediaType string, marked map[digest.Digest]bool) error {
	if marked[dgst] {
		return nil
	}
	marked[dgst] = true
	if err := ctx.Err(); err != nil {
		return err
	}
	body, err := s.driver.GetContent(ctx, blobPath(dgst))
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading manifest %s: %w", dgst, err)
	}
	if dgst.Algorithm().FromBytes(body) != dgst {
		return nil // corrupt: GetManifest removes it on the next read
	}
	for _, ref := range references(mediaType, body) {
		if ref.Digest.Validate() != nil {
			continue
		}
		if oci.IsManifestMediaType(ref.MediaType) {
			if err := s.markManifest(ctx, ref.Digest, ref.MediaType, marked); err != nil {
				return err
			}
			continue
		}
		marked[ref.Digest] = true
	}
	return nil
}
