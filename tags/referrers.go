package tags

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/upstream"
)

// emptyReferrers is the referrers index of a subject nothing refers to, and
// the answer for an upstream without the referrers API.
var emptyReferrers = cache.Referrers{
	Body:        []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`),
	ContentType: "application/vnd.oci.image.index.v1+json",
}

// ReferrersAnswer is the referrers index of a manifest, and how it was
// decided.
type ReferrersAnswer struct {
	Body        []byte
	ContentType string
	Outcome     Outcome
}

// Referrers answers the referrers index of subject in img's repository,
// filtered by artifactType when not empty. Policy controllers (Kyverno,
// cosign) ask for it on every admission, so it follows the tag policy: the
// cached list within the upstream's tag TTL, then one upstream request,
// and the cached list, stale, while the upstream is unavailable.
func (r *Resolver) Referrers(ctx context.Context, img Image, subject digest.Digest, artifactType string) (ReferrersAnswer, error) {
	u, err := r.upstreamOf(img)
	if err != nil {
		return ReferrersAnswer{}, err
	}
	cached, cacheErr := r.store.GetReferrers(ctx, u.Name, img.Repository, subject, artifactType)
	haveCached := cacheErr == nil
	if cacheErr != nil && !errors.Is(cacheErr, cache.ErrNotFound) {
		r.log.Warn("unreadable referrers record; asking the upstream", "image", img, "subject", subject, "error", cacheErr)
	}
	offline := r.Offline(u.Name)
	if haveCached && (offline || cached.Fresh(u.TagTTL, r.now())) {
		return ReferrersAnswer{cached.Body, cached.ContentType, Hit}, nil
	}
	if offline {
		return ReferrersAnswer{emptyReferrers.Body, emptyReferrers.ContentType, Hit}, nil
	}

	key := "referrers\x00" + u.Name + "\x00" + img.Repository + "\x00" + subject.String() + "\x00" + artifactType
	fetched, err := r.referrersFlight.Do(ctx, key, workTimeout(u), func(ctx context.Context) (cache.Referrers, error) {
		var query url.Values
		if artifactType != "" {
			query = url.Values{"artifactType": {artifactType}}
		}
		body, contentType, err := r.upstreams[u.Name].Referrers(ctx, img.Repository, subject, query)
		list := cache.Referrers{Body: body, ContentType: contentType}
		switch {
		case errors.Is(err, upstream.ErrNotFound):
			list = emptyReferrers
		case err != nil:
			return cache.Referrers{}, err
		}
		list.ConfirmedAt = r.now().UTC()
		if err := r.store.PutReferrers(ctx, u.Name, img.Repository, subject, artifactType, list); err != nil {
			r.log.Error("could not record referrers; they will be asked for again", "image", img, "subject", subject, "error", err)
		}
		return list, nil
	})
	if err == nil {
		return ReferrersAnswer{fetched.Body, fetched.ContentType, Miss}, nil
	}
	if haveCached && upstream.IsUnavailable(err) {
		r.log.Warn("serving stale referrers: upstream unavailable", "image", img, "subject", subject, "error", err)
		return ReferrersAnswer{cached.Body, cached.ContentType, Stale}, nil
	}
	return ReferrersAnswer{}, fmt.Errorf("referrers of %s@%s: %w", img.Repository, subject, err)
}
