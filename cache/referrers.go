package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/opencontainers/go-digest"
)

// Referrers is a cached referrers index of a manifest (OCI 1.1): the
// signatures, SBOMs and attestations that refer to it, as the upstream
// listed them when it last confirmed the list.
type Referrers struct {
	Body        []byte    `json:"body"`
	ContentType string    `json:"contentType"`
	ConfirmedAt time.Time `json:"confirmedAt"`
}

// Fresh reports whether the record may be answered without asking the
// upstream.
func (r Referrers) Fresh(ttl time.Duration, now time.Time) bool {
	return now.Sub(r.ConfirmedAt) < ttl
}

// referrersPath keys a list by the subject digest and the artifactType
// filter it was asked with.
func referrersPath(registry, repo string, subject digest.Digest, artifactType string) string {
	name := subject.Algorithm().String() + "-" + subject.Encoded()
	if artifactType != "" {
		name += "-" + digest.FromString(artifactType).Encoded()[:16]
	}
	return path.Join(repoPath(registry, repo), "_referrers", name)
}

// GetReferrers returns the cached referrers of subject, or ErrNotFound.
func (s *Store) GetReferrers(ctx context.Context, registry, repo string, subject digest.Digest, artifactType string) (Referrers, error) {
	b, err := s.driver.GetContent(ctx, referrersPath(registry, repo, subject, artifactType))
	if isPathNotFound(err) {
		return Referrers{}, ErrNotFound
	}
	if err != nil {
		return Referrers{}, err
	}
	var r Referrers
	if err := json.Unmarshal(b, &r); err != nil {
		return Referrers{}, fmt.Errorf("referrers record of %s/%s@%s is corrupt", registry, repo, subject)
	}
	return r, nil
}

// PutReferrers records the referrers of subject as the upstream listed them.
func (s *Store) PutReferrers(ctx context.Context, registry, repo string, subject digest.Digest, artifactType string, r Referrers) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.putAtomic(ctx, referrersPath(registry, repo, subject, artifactType), b)
}
