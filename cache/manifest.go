package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Manifest is a manifest exactly as the upstream sent it.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Body      []byte
}

// Link records that a repository is known to hold a digest. For manifests
// it also keeps the media type the upstream served it with; for blobs the
// size the descriptor (or the upstream's HEAD) gave, which a fill must
// deliver and a cached blob must have.
type Link struct {
	MediaType string `json:"mediaType,omitempty"`
	Manifest  bool   `json:"manifest,omitempty"`
	// Size is -1 when unknown (links written before sizes were kept).
	Size     int64     `json:"size"`
	LinkedAt time.Time `json:"linkedAt"`
}

// PutManifest verifies m against its digest, stores its bytes unchanged,
// links it to the repository, and links what it references (an image's
// config and layers, an index's manifests, and a subject) with their
// sizes, so that later blob requests for this repository may be answered
// from the cache. When storage fails after m was verified, the error is
// ErrNotStored: m may still be served, uncached.
func (s *Store) PutManifest(ctx context.Context, registry, repo string, m Manifest) error {
	if len(m.Body) > oci.MaxManifestSize {
		return fmt.Errorf("manifest %s is %d bytes, over the %d byte limit", m.Digest, len(m.Body), oci.MaxManifestSize)
	}
	if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("manifest digest %q: %w", m.Digest, err)
	}
	if got := m.Digest.Algorithm().FromBytes(m.Body); got != m.Digest {
		return fmt.Errorf("manifest %s: %w (got %s)", m.Digest, oci.ErrDigestMismatch, got)
	}
	if err := s.storeManifest(ctx, registry, repo, m); err != nil {
		return fmt.Errorf("storing manifest %s: %w", m.Digest, s.notStored(err))
	}
	return nil
}

// storeManifest writes a verified manifest and its links.
func (s *Store) storeManifest(ctx context.Context, registry, repo string, m Manifest) error {
	if _, err := s.driver.Stat(ctx, blobPath(m.Digest)); err != nil {
		if !isPathNotFound(err) {
			return err
		}
		if err := s.putAtomic(ctx, blobPath(m.Digest), m.Body); err != nil {
			return err
		}
		s.accountCommit(m.Digest, int64(len(m.Body)))
	}
	for _, ref := range references(m.MediaType, m.Body) {
		if ref.Digest.Validate() != nil {
			continue
		}
		if err := s.link(ctx, registry, repo, ref.Digest, Link{Size: ref.Size}); err != nil {
			return err
		}
	}
	return s.link(ctx, registry, repo, m.Digest, Link{MediaType: m.MediaType, Manifest: true, Size: int64(len(m.Body))})
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
	if s.manifests != nil {
		if body, ok := s.manifests.get(dgst); ok {
			s.touch(dgst)
			return Manifest{Digest: dgst, MediaType: l.MediaType, Body: body}, nil
		}
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
	if s.manifests != nil {
		s.manifests.add(dgst, body)
	}
	return Manifest{Digest: dgst, MediaType: l.MediaType, Body: body}, nil
}

// LinkBlob records that the repository holds the blob of size bytes (-1
// unknown), once the upstream confirmed it.
func (s *Store) LinkBlob(ctx context.Context, registry, repo string, dgst digest.Digest, size int64) error {
	return s.link(ctx, registry, repo, dgst, Link{Size: size})
}

// GetLink returns ErrNotFound when the repository is not known to hold dgst.
func (s *Store) GetLink(ctx context.Context, registry, repo string, dgst digest.Digest) (Link, error) {
	l := Link{Size: -1} // kept by links that recorded no size
	err := s.getJSON(ctx, linkPath(registry, repo, dgst), fmt.Sprintf("link %s in %s/%s", dgst, registry, repo), &l)
	return l, err
}

func (s *Store) link(ctx context.Context, registry, repo string, dgst digest.Digest, l Link) error {
	if existing, err := s.GetLink(ctx, registry, repo, dgst); err == nil {
		// Add what the existing link lacks; never take anything away.
		merged := existing
		if l.Manifest && !existing.Manifest {
			merged.Manifest, merged.MediaType = true, l.MediaType
		}
		if merged.Size < 0 {
			merged.Size = l.Size
		}
		if merged == existing {
			return nil
		}
		l = merged
	}
	l.LinkedAt = time.Now().UTC()
	return s.putJSON(ctx, linkPath(registry, repo, dgst), l)
}

// references lists the descriptors a manifest points at, by its media
// type (the one the body declares, else the one it was served with): an
// image manifest's config, layers and subject; an index's manifests and
// subject. Other fields, and other media types, reference nothing: a
// manifest cannot make a repository hold a blob by naming it elsewhere.
func references(servedType string, body []byte) []ocispec.Descriptor {
	var declared struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &declared) != nil {
		return nil
	}
	mediaType := declared.MediaType
	if mediaType == "" {
		mediaType = servedType
	}
	var out []ocispec.Descriptor
	switch mediaType {
	case ocispec.MediaTypeImageManifest, mediaTypeDockerManifest:
		var m ocispec.Manifest
		if json.Unmarshal(body, &m) != nil {
			return nil
		}
		out = append([]ocispec.Descriptor{m.Config}, m.Layers...)
		if m.Subject != nil {
			out = append(out, *m.Subject)
		}
	case ocispec.MediaTypeImageIndex, mediaTypeDockerManifestList:
		var idx ocispec.Index
		if json.Unmarshal(body, &idx) != nil {
			return nil
		}
		out = idx.Manifests
		if idx.Subject != nil {
			out = append(out, *idx.Subject)
		}
	}
	return out
}

// Docker's manifest media types, which image-spec does not define.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)
