package cache

import (
	"context"
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
	var r Referrers
	what := fmt.Sprintf("referrers record of %s/%s@%s", registry, repo, subject)
	if err := s.getJSON(ctx, referrersPath(registry, repo, subject, artifactType), what, &r); err != nil {
		return Referrers{}, err
	}
	return r, nil
}

// PutReferrers records the referrers of subject as the upstream listed them.
func (s *Store) PutReferrers(ctx context.Context, registry, repo string, subject digest.Digest, artifactType string, r Referrers) error {
	return s.putJSON(ctx, referrersPath(registry, repo, subject, artifactType), r)
}
