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
	// Owners, when replicas share the storage, lets the one replica that
	// owns an image reference resolve it for all of them; nil resolves
	// everything here.
	Owners Owners
}

// Owners answers for the replica that owns an image reference among
// replicas sharing one storage, so that a tag is resolved (and a sticky pin
// decided) once, not once per replica.
type Owners interface {
	// OwnedElsewhere reports whether another replica owns img and may be
	// asked now.
	OwnedElsewhere(img Image) bool
	// Resolve asks the owner of img which manifest it means now; the
	// owner has stored that manifest. ok is false when this replica owns
	// img or the owner could not answer: resolve it here.
	Resolve(ctx context.Context, img Image, accept []string) (dgst digest.Digest, outcome Outcome, ok bool)
}

// Resolver answers which manifest a tag or digest means now.
type Resolver struct {
	cfg       *config.Config
	store     *cache.Store
	upstreams map[string]*upstream.Client
	log       *slog.Logger
	now       func() time.Time
	rules     *pinRules
	owners    Owners
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
		log: opts.Logger, now: opts.Now, rules: rules, owners: opts.Owners,
	}, nil
}

// Manifest answers img: by digest when it has one, else by tag under the
// pin rules, the tag TTL and the upstream's availability. accept is the
// client's Accept list (media types without parameters; empty means any).
func (r *Resolver) Manifest(ctx context.Context, img Image, accept []string) (Answer, error) {
	return r.manifest(ctx, img, accept, true)
}

// ManifestHere is Manifest for the replica that owns img: what the
// upstream must be asked, it asks itself, never another replica (whose
// view of the owners may differ from this one's for a moment).
func (r *Resolver) ManifestHere(ctx context.Context, img Image, accept []string) (Answer, error) {
	return r.manifest(ctx, img, accept, false)
}

// manifest answers img; askOwner lets another replica that owns img
// resolve it.
func (r *Resolver) manifest(ctx context.Context, img Image, accept []string, askOwner bool) (Answer, error) {
	u, err := r.upstreamOf(img)
	if err != nil {
		return Answer{}, err
	}
	if img.Digest != "" {
		return r.byDigest(ctx, u, img, accept, askOwner)
	}
	return r.byTag(ctx, u, img, accept, askOwner)
}

func (r *Resolver) upstreamOf(img Image) (config.Upstream, error) {
	u, ok := r.cfg.Upstream(img.Registry)
	if !ok {
		return config.Upstream{}, &NameError{Reason: fmt.Sprintf("registry %q is not a configured upstream of this proxy", img.Registry)}
	}
	return u, nil
}

func (r *Resolver) byDigest(ctx context.Context, u config.Upstream, img Image, accept []string, askOwner bool) (Answer, error) {
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
	askOwner = r.ownedElsewhere(img, askOwner)
	key := flightKey("digest", askOwner) + u.Name + "\x00" + img.Repository + "\x00" + img.Digest.String()
	return r.flight.Do(ctx, key, workTimeout(u), func(ctx context.Context) (Answer, error) {
		if ans, ok := r.fromOwner(ctx, u, img, accept, askOwner); ok {
			return ans, nil
		}
		m, err := r.fetchManifest(ctx, u, img.Repository, img.Digest, accept)
		return Answer{m, Miss}, err
	})
}

func (r *Resolver) byTag(ctx context.Context, u config.Upstream, img Image, accept []string, askOwner bool) (Answer, error) {
	rule, ruleIndex := r.rules.match(img)
	if ans, ok, err := r.pinned(ctx, u, img, rule, ruleIndex, askOwner); ok || err != nil {
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

	ans, err := r.resolveShared(ctx, u, img, accept, rule.Policy == config.PolicySticky, askOwner)
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
func (r *Resolver) pinned(ctx context.Context, u config.Upstream, img Image, rule config.PinRule, ruleIndex int, askOwner bool) (ans Answer, ok bool, err error) {
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
	ans, err = r.byDigest(ctx, u, byDigest, nil, askOwner)
	if err != nil {
		return Answer{}, false, err
	}
	ans.Outcome = Pinned
	return ans, true, nil
}

// resolveShared asks the upstream what the tag means now, once for all
// concurrent callers; stick records the answer as a sticky pin. With
// askOwner, the replica that owns the tag is asked first: it resolved (and
// pinned) it for every replica.
func (r *Resolver) resolveShared(ctx context.Context, u config.Upstream, img Image, accept []string, stick, askOwner bool) (Answer, error) {
	askOwner = r.ownedElsewhere(img, askOwner)
	key := flightKey("tag", askOwner) + u.Name + "\x00" + img.Repository + "\x00" + img.Tag + "\x00" + strings.Join(accept, ",")
	return r.flight.Do(ctx, key, workTimeout(u), func(ctx context.Context) (Answer, error) {
		if ans, ok := r.fromOwner(ctx, u, img, accept, askOwner); ok {
			return ans, nil
		}
		if stick {
			// The tag may have been pinned since the caller looked: by a
			// run that ended just before this one started, or by an owner
			// whose answer did not arrive. That first decision stands.
			if ans, ok, err := r.pinned(ctx, u, img, config.PinRule{Policy: config.PolicySticky}, -1, askOwner); ok || err != nil {
				return ans, err
			}
		}
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

// ownedElsewhere reports whether another replica owns img and should be
// asked (askOwner: the caller is not serving that replica already).
func (r *Resolver) ownedElsewhere(img Image, askOwner bool) bool {
	return askOwner && r.owners != nil && r.owners.OwnedElsewhere(img)
}

// fromOwner asks the replica that owns img what it means and reads that
// manifest from the shared storage. ok is false when there is no owner to
// ask, the owner could not answer, or its manifest is not in storage:
// then this replica asks the upstream itself.
func (r *Resolver) fromOwner(ctx context.Context, u config.Upstream, img Image, accept []string, askOwner bool) (Answer, bool) {
	if !askOwner {
		return Answer{}, false
	}
	dgst, outcome, ok := r.owners.Resolve(ctx, img, accept)
	if !ok {
		return Answer{}, false
	}
	m, err := r.store.GetManifest(ctx, u.Name, img.Repository, dgst)
	if err != nil {
		r.log.Warn("the owner of an image answered a manifest storage does not hold; asking the upstream", "image", img, "digest", dgst, "error", err)
		return Answer{}, false
	}
	return Answer{m, outcome}, true
}

// flightKey starts the key of a shared run. A run that asks another
// replica and one that resolves here never share: the owner's own requests
// and its peers' share one run, while two replicas that each think the
// other owns a key (peer sets differ for a moment) cannot wait on each
// other.
func flightKey(kind string, askOwner bool) string {
	if askOwner {
		return kind + "\x00"
	}
	return kind + "-here\x00"
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
