package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
)

// MaxManifestSize bounds a manifest held in memory, as registries do.
const MaxManifestSize = 4 << 20

// Manifest is a manifest exactly as the upstream sent it.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Body      []byte
}

// Link records that a repository is known to hold a digest. For manifests
// it also keeps the media type the upstream served it with.
type Link struct {
	MediaType string    `json:"mediaType,omitempty"`
	Manifest  bool      `json:"manifest,omitempty"`
	LinkedAt  time.Time `json:"linkedAt"`
}

// PutManifest verifies m against its digest, stores its bytes unchanged,
// links it to the repository, and links what it references (layers,
// config, child manifests) so that later blob requests for this repository
// may be answered from the cache.
func (s *Store) PutManifest(ctx context.Context, registry, repo string, m Manifest) error {
	if len(m.Body) > MaxManifestSize {
		return fmt.Errorf("manifest %s is %d bytes, over the %d byte limit", m.Digest, len(m.Body), MaxManifestSize)
	}
	if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("manifest digest %q: %w", m.Digest, err)
	}
	if got := m.Digest.Algorithm().FromBytes(m.Body); got != m.Digest {
		return fmt.Errorf("manifest %s: %w (got %s)", m.Digest, ErrDigestMismatch, got)
	}
	if _, err := s.driver.Stat(ctx, blobPath(m.Digest)); err != nil {
		if !isPathNotFound(err) {
			return err
		}
		if err := s.putAtomic(ctx, blobPath(m.Digest), m.Body); err != nil {
			return fmt.Errorf("storing manifest %s: %w", m.Digest, err)
		}
		s.accountCommit(m.Digest, int64(len(m.Body)))
	}
	for _, ref := range references(m.Body) {
		if ref.Validate() != nil {
			continue
		}
		if err := s.link(ctx, registry, repo, ref, Link{}); err != nil {
			return err
		}
	}
	return s.link(ctx, registry, repo, m.Digest, Link{MediaType: m.MediaType, Manifest: true})
}

// GetManifest returns the manifest dgst if the repository is known to hold
// it. The bytes are checked against the digest again on every read: they
// are small, and storage can rot.
func (s *Store) GetManifest(ctx context.Context, registry, repo string, dgst digest.Digest) (Manifest, error) {
	l, err := s.GetLink(ctx, registry, repo, dgst)
	if err != nil {
		return Manifest{}, err
	}
	if !l.Manifest {
		return Manifest{}, ErrNotFound
	}
	body, err := s.driver.GetContent(ctx, blobPath(dgst))
	if isPathNotFound(err) {
		return Manifest{}, ErrNotFound
	}
	if err != nil {
		return Manifest{}, err
	}
	if dgst.Algorithm().FromBytes(body) != dgst {
		s.log.Error("cached manifest is corrupt; removing it", "digest", dgst)
		_ = s.driver.Delete(ctx, blobPath(dgst))
		s.accountDelete(dgst)
		return Manifest{}, ErrNotFound
	}
	s.touch(dgst)
	return Manifest{Digest: dgst, MediaType: l.MediaType, Body: body}, nil
}

// LinkBlob records that the repository holds the blob, once the upstream
// confirmed it.
func (s *Store) LinkBlob(ctx context.Context, registry, repo string, dgst digest.Digest) error {
	return s.link(ctx, registry, repo, dgst, Link{})
}

// GetLink returns ErrNotFound when the repository is not known to hold dgst.
func (s *Store) GetLink(ctx context.Context, registry, repo string, dgst digest.Digest) (Link, error) {
	var l Link
	err := s.getJSON(ctx, linkPath(registry, repo, dgst), fmt.Sprintf("link %s in %s/%s", dgst, registry, repo), &l)
	return l, err
}

func (s *Store) link(ctx context.Context, registry, repo string, dgst digest.Digest, l Link) error {
	if existing, err := s.GetLink(ctx, registry, repo, dgst); err == nil && (existing.Manifest || !l.Manifest) {
		return nil
	}
	l.LinkedAt = time.Now().UTC()
	return s.putJSON(ctx, linkPath(registry, repo, dgst), l)
}

// references lists the digests an image manifest or index points at. It
// reads only the fields both OCI and Docker formats share, so unknown
// media types simply reference nothing.
func references(body []byte) []digest.Digest {
	type descriptor struct {
		Digest digest.Digest `json:"digest"`
	}
	var m struct {
		Config    *descriptor  `json:"config"`
		Layers    []descriptor `json:"layers"`
		Manifests []descriptor `json:"manifests"`
		Blobs     []descriptor `json:"blobs"`
	}
	if json.Unmarshal(body, &m) != nil {
		return nil
	}
	var out []digest.Digest
	if m.Config != nil {
		out = append(out, m.Config.Digest)
	}
	for _, list := range [][]descriptor{m.Layers, m.Manifests, m.Blobs} {
		for _, d := range list {
			out = append(out, d.Digest)
		}
	}
	return out
}
