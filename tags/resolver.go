package tags

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/flight"
	"github.com/pullbroker/pullbroker/internal/oci"
	"github.com/pullbroker/pullbroker/upstream"
)

// Outcome is how an answer was reached, as logged and counted.
type Outcome string

const (
	// Hit is answered from the cache with no upstream request.
	Hit Outcome = "hit"
	// Miss is fetched from the upstream.
	Miss Outcome = "miss"
	// Stale is a tag answered from the cache because the upstream is unavailable.
	Stale Outcome = "stale"
	// Revalidated is a tag the upstream confirmed still points at a cached manifest.
	Revalidated Outcome = "revalidated"
	// Pinned is a tag answered from a pin or a lock file.
	Pinned Outcome = "pinned"
)

// Answer is the manifest a reference means now, and how that was decided.
type Answer struct {
	Manifest cache.Manifest
	Outcome  Outcome
}

// ErrStorage marks a failure of the cache's storage, as opposed to the
// upstream's.
var ErrStorage = errors.New("cache storage")

// ErrNotInLockFile is a tag under a locked rule whose lock file has no
// digest for it.
var ErrNotInLockFile = errors.New("locked tag missing from its lock file")

// Options are what a Resolver is built from.
type Options struct {
	Config *config.Config
	Store  *cache.Store
	// Upstreams holds one client per configured upstream, by Name.
	Upstreams map[string]*upstream.Client
	Logger    *slog.Logger
	// Now is the clock; tests move it.
	Now func() time.Time
}

// Resolver answers which manifest a tag or digest means now.
type Resolver struct {
	cfg       *config.Config
	store     *cache.Store
	upstreams map[string]*upstream.Client
	log       *slog.Logger
	now       func() time.Time
	rules     *pinRules
	// Concurrent requests for one tag, manifest or referrers list share
	// one upstream round trip.
	flight          flight.Group[Answer]
	referrersFlight flight.Group[cache.Referrers]
}

// New loads the pin rules and their lock files.
func New(opts Options) (*Resolver, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, u := range opts.Config.Upstreams {
		if opts.Upstreams[u.Name] == nil {
			return nil, fmt.Errorf("tags: no upstream client for configured upstream %q", u.Name)
		}
	}
	rules, err := loadPinRules(opts.Config)
	if err != nil {
		return nil, err
	}
	return &Resolver{
		cfg: opts.Config, store: opts.Store, upstreams: opts.Upstreams,
		log: opts.Logger, now: opts.Now, rules: rules,
	}, nil
}

// Manifest answers img: by digest when it has one, else by tag under the
// pin rules, the tag TTL and the upstream's availability. accept is the
// client's Accept list (media types without parameters; empty means any).
func (r *Resolver) Manifest(ctx context.Context, img Image, accept []string) (Answer, error) {
	u, err := r.upstreamOf(img)
	if err != nil {
		return Answer{}, err
	}
	if img.Digest != "" {
		return r.byDigest(ctx, u, img, accept)
	}
	return r.byTag(ctx, u, img, accept)
}

func (r *Resolver) upstreamOf(img Image) (config.Upstream, error) {
	u, ok := r.cfg.Upstream(img.Registry)
	if !ok {
		return config.Upstream{}, &NameError{Reason: fmt.Sprintf("registry %q is not a configured upstream of this proxy", img.Registry)}
	}
	return u, nil
}

func (r *Resolver) byDigest(ctx context.Context, u config.Upstream, img Image, accept []string) (Answer, error) {
	m, err := r.store.GetManifest(ctx, u.Name, img.Repository, img.Digest)
	if err == nil {
		return Answer{m, Hit}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return Answer{}, fmt.Errorf("%w: %w", ErrStorage, err)
	}
	if r.Offline(u.Name) {
		return Answer{}, upstream.ErrOffline
	}
	key := "digest\x00" + u.Name + "\x00" + img.Repository + "\x00" + img.Digest.String()
	return r.flight.Do(ctx, key, workTimeout(u), func(ctx context.Context) (Answer, error) {
		m, err := r.fetchManifest(ctx, u, img.Repository, img.Digest, accept)
		return Answer{m, Miss}, err
	})
}

func (r *Resolver) byTag(ctx context.Context, u config.Upstream, img Image, accept []string) (Answer, error) {
	rule, ruleIndex := r.rules.match(img)
	if ans, ok, err := r.pinned(ctx, u, img, rule, ruleIndex); ok || err != nil {
		return ans, err
	}
	ttl := u.TagTTL
	if rule.Policy == config.PolicyTTL && rule.TTL > 0 {
		ttl = rule.TTL
	}

	tag, tagErr := r.store.GetTag(ctx, u.Name, img.Repository, img.Tag)
	haveTag := tagErr == nil
	if tagErr != nil && !errors.Is(tagErr, cache.ErrNotFound) {
		r.log.Warn("unreadable tag record; asking the upstream", "image", img, "error", tagErr)
	}
	offline := r.Offline(u.Name)
	if haveTag && (offline || (tag.Fresh(ttl, r.now()) && acceptable(tag.MediaType, accept))) {
		if m, err := r.store.GetManifest(ctx, u.Name, img.Repository, tag.Digest); err == nil {
			return Answer{m, Hit}, nil
		}
		haveTag = false
	}
	if offline {
		return Answer{}, upstream.ErrOffline
	}

	ans, err := r.resolveShared(ctx, u, img, accept, rule.Policy == config.PolicySticky)
	if err == nil {
		return ans, nil
	}
	if haveTag && upstream.IsUnavailable(err) {
		if m, cerr := r.store.GetManifest(ctx, u.Name, img.Repository, tag.Digest); cerr == nil {
			r.log.Warn("serving a stale tag: upstream unavailable", "image", img, "error", err)
			return Answer{m, Stale}, nil
		}
	}
	return Answer{}, err
}

// pinned answers a tag from its pin or a locked rule, with no upstream
// request for the tag. ok is false when neither applies.
func (r *Resolver) pinned(ctx context.Context, u config.Upstream, img Image, rule config.PinRule, ruleIndex int) (ans Answer, ok bool, err error) {
	var dgst digest.Digest
	pin, err := r.store.GetPin(ctx, u.Name, img.Repository, img.Tag)
	switch {
	case err == nil:
		dgst = pin.Digest
	case !errors.Is(err, cache.ErrNotFound):
		return Answer{}, false, fmt.Errorf("%w: %w", ErrStorage, err)
	case rule.Policy == config.PolicyLocked:
		d, found := r.rules.locked[ruleIndex][img.String()]
		if !found {
			return Answer{}, false, fmt.Errorf("%w: %s is locked by pins[%d] but its lock file %s has no digest for it",
				ErrNotInLockFile, img, ruleIndex, rule.LockFile)
		}
		dgst = d
	default:
		return Answer{}, false, nil
	}
	byDigest := img
	byDigest.Tag, byDigest.Digest = "", dgst
	ans, err = r.byDigest(ctx, u, byDigest, nil)
	if err != nil {
		return Answer{}, false, err
	}
	ans.Outcome = Pinned
	return ans, true, nil
}

// resolveShared asks the upstream what the tag means now, once for all
// concurrent callers; stick records the answer as a sticky pin.
func (r *Resolver) resolveShared(ctx context.Context, u config.Upstream, img Image, accept []string, stick bool) (Answer, error) {
	key := "tag\x00" + u.Name + "\x00" + img.Repository + "\x00" + img.Tag + "\x00" + strings.Join(accept, ",")
	return r.flight.Do(ctx, key, workTimeout(u), func(ctx context.Context) (Answer, error) {
		ans, err := r.resolveTag(ctx, u, img, accept)
		if err == nil && stick {
			r.stick(ctx, img, ans.Manifest)
		}
		return ans, err
	})
}

// resolveTag asks the upstream what the tag points at with a HEAD (which
// Docker Hub does not count as a pull) and GETs the manifest only when
// the cache does not hold that digest yet.
func (r *Resolver) resolveTag(ctx context.Context, u config.Upstream, img Image, accept []string) (Answer, error) {
	head, err := r.upstreams[u.Name].HeadManifest(ctx, img.Repository, img.Tag, accept)
	if err != nil {
		return Answer{}, err
	}
	outcome := Revalidated
	m, err := r.store.GetManifest(ctx, u.Name, img.Repository, head.Digest)
	if errors.Is(err, cache.ErrNotFound) {
		outcome = Miss
		m, err = r.fetchManifest(ctx, u, img.Repository, head.Digest, accept)
	}
	if err != nil {
		return Answer{}, err
	}
	err = r.store.PutTag(ctx, u.Name, img.Repository, img.Tag, cache.Tag{
		Digest:      m.Digest,
		MediaType:   m.MediaType,
		Size:        int64(len(m.Body)),
		ConfirmedAt: r.now().UTC(),
	})
	if err != nil {
		r.log.Error("could not record tag; it will be revalidated next time", "image", img, "error", err)
	}
	return Answer{m, outcome}, nil
}

// fetchManifest GETs a manifest by digest and stores it. The upstream
// client and PutManifest verify the bytes against the digest before any
// write, so a manifest the storage cannot take (cache.ErrNotStored: a full
// disk) is still answered, uncached.
func (r *Resolver) fetchManifest(ctx context.Context, u config.Upstream, repo string, dgst digest.Digest, accept []string) (cache.Manifest, error) {
	um, err := r.upstreams[u.Name].GetManifest(ctx, repo, dgst.String(), withDefaultTypes(accept))
	if err != nil {
		return cache.Manifest{}, err
	}
	m := cache.Manifest{Digest: um.Digest, MediaType: um.MediaType, Body: um.Body}
	if err := r.store.PutManifest(ctx, u.Name, repo, m); err != nil {
		if !errors.Is(err, cache.ErrNotStored) {
			return cache.Manifest{}, err
		}
		r.log.Error("could not cache a verified manifest; answering it uncached", "registry", u.Name, "repository", repo, "digest", dgst, "error", err)
	}
	return m, nil
}

// Offline reports whether the registry's upstream must not be asked.
func (r *Resolver) Offline(registry string) bool {
	c := r.upstreams[registry]
	return c == nil || c.Offline()
}

// workTimeout bounds upstream work shared by concurrent callers.
func workTimeout(u config.Upstream) time.Duration {
	return cmp.Or(u.WorkTimeout, config.DefaultWorkTimeout)
}

func acceptable(mediaType string, accept []string) bool {
	return len(accept) == 0 || slices.Contains(accept, "*/*") || slices.Contains(accept, mediaType)
}

// withDefaultTypes widens a by-digest request: the digest names exactly
// one manifest, whatever the client said it accepts.
func withDefaultTypes(accept []string) []string {
	out := oci.ManifestMediaTypes()
	for _, a := range accept {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
