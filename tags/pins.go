package tags

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
)

// Pin is a tag bound to a digest until someone changes it on purpose, as
// the admin API serves it and its clients read it.
type Pin struct {
	Registry   string        `json:"registry"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType,omitempty"`
	// Policy is what set the pin: config.PolicySticky or config.PolicyManual.
	Policy   string    `json:"policy"`
	PinnedAt time.Time `json:"pinnedAt"`
}

// Image is the pinned tag.
func (p Pin) Image() Image {
	return Image{Registry: p.Registry, Repository: p.Repository, Tag: p.Tag}
}

func pinFromRecord(rec cache.Pin) Pin {
	return Pin{Registry: rec.Registry, Repository: rec.Repository, Tag: rec.Tag, Digest: rec.Digest,
		MediaType: rec.MediaType, Policy: rec.Policy, PinnedAt: rec.PinnedAt}
}

// Refresh reports what RefreshPin found.
type Refresh struct {
	Image   string        `json:"image"`
	Old     digest.Digest `json:"old,omitempty"`
	New     digest.Digest `json:"new"`
	Changed bool          `json:"changed"`
}

// ErrNotPinned is a tag with no pin.
var ErrNotPinned = errors.New("not pinned")

// checkTag refuses an image that is not a plain tag of a configured upstream.
func (r *Resolver) checkTag(img Image) (Image, error) {
	if img.Tag == "" || img.Digest != "" {
		return Image{}, fmt.Errorf("%s: pins bind a tag; give registry/repository:tag without a digest", img)
	}
	u, err := r.upstreamOf(img)
	if err != nil {
		return Image{}, err
	}
	img.Registry = u.Name
	return img, nil
}

// SetPin pins img's tag to dgst, or to the upstream's current resolution
// when dgst is empty. The manifest is cached first, so a pin never points
// at content the proxy cannot serve.
func (r *Resolver) SetPin(ctx context.Context, img Image, dgst digest.Digest) (Pin, error) {
	img, err := r.checkTag(img)
	if err != nil {
		return Pin{}, err
	}
	u, _ := r.upstreamOf(img)
	var ans Answer
	// An operator's pin is resolved by the replica it was sent to, from
	// the upstream now: the tag's owner would answer its tag record.
	if dgst == "" {
		ans, err = r.resolveShared(ctx, u, img, nil, false, false)
	} else {
		byDigest := img
		byDigest.Tag, byDigest.Digest = "", dgst
		ans, err = r.byDigest(ctx, u, byDigest, nil, false)
	}
	if err != nil {
		return Pin{}, err
	}
	return r.writePin(ctx, img, ans.Manifest, config.PolicyManual)
}

// RefreshPin resolves the tag upstream now and moves its pin (keeping the
// pin's policy) if the digest changed.
func (r *Resolver) RefreshPin(ctx context.Context, img Image) (Refresh, error) {
	img, err := r.checkTag(img)
	if err != nil {
		return Refresh{}, err
	}
	u, _ := r.upstreamOf(img)
	out := Refresh{Image: img.String()}
	policy := config.PolicyManual
	old, err := r.store.GetPin(ctx, img.Registry, img.Repository, img.Tag)
	switch {
	case err == nil:
		out.Old, policy = old.Digest, old.Policy
	case !errors.Is(err, cache.ErrNotFound):
		return Refresh{}, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	ans, err := r.resolveShared(ctx, u, img, nil, false, false)
	if err != nil {
		return Refresh{}, err
	}
	out.New, out.Changed = ans.Manifest.Digest, ans.Manifest.Digest != out.Old
	if out.Changed {
		_, err = r.writePin(ctx, img, ans.Manifest, policy)
	}
	return out, err
}

// GetPin returns the pin of img's tag, or an error wrapping ErrNotPinned.
func (r *Resolver) GetPin(ctx context.Context, img Image) (Pin, error) {
	img, err := r.checkTag(img)
	if err != nil {
		return Pin{}, err
	}
	rec, err := r.store.GetPin(ctx, img.Registry, img.Repository, img.Tag)
	if errors.Is(err, cache.ErrNotFound) {
		return Pin{}, fmt.Errorf("%s is %w", img, ErrNotPinned)
	}
	if err != nil {
		return Pin{}, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return pinFromRecord(rec), nil
}

// Unpin removes the pin of img's tag; one that does not exist is an error
// wrapping ErrNotPinned, so an operator learns of a typo.
func (r *Resolver) Unpin(ctx context.Context, img Image) error {
	if _, err := r.GetPin(ctx, img); err != nil {
		return err
	}
	if err := r.store.DeletePin(ctx, img.Registry, img.Repository, img.Tag); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// Pins lists every pin, sorted by image.
func (r *Resolver) Pins(ctx context.Context) ([]Pin, error) {
	recs, err := r.store.Pins(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	out := make([]Pin, 0, len(recs))
	for _, rec := range recs {
		out = append(out, pinFromRecord(rec))
	}
	return out, nil
}

func (r *Resolver) writePin(ctx context.Context, img Image, m cache.Manifest, policy string) (Pin, error) {
	rec := cache.Pin{Registry: img.Registry, Repository: img.Repository, Tag: img.Tag,
		Digest: m.Digest, MediaType: m.MediaType, Policy: policy, PinnedAt: r.now().UTC()}
	if err := r.store.PutPin(ctx, rec); err != nil {
		return Pin{}, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return pinFromRecord(rec), nil
}

// stick records the first resolution of a tag under a sticky rule; a
// failure only means the tag is resolved again next time.
func (r *Resolver) stick(ctx context.Context, img Image, m cache.Manifest) {
	if _, err := r.writePin(ctx, img, m, config.PolicySticky); err != nil {
		r.log.Error("could not record sticky pin; the tag will be resolved again", "image", img, "error", err)
	}
}
