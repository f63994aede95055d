package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/opencontainers/go-digest"
	"sigs.k8s.io/yaml"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/glob"
)

// Pin policies.
const (
	PolicyTTL    = "ttl"
	PolicySticky = "sticky"
	PolicyLocked = "locked"
	// PolicyManual marks pins set by an operator, sync or import.
	PolicyManual = "manual"
)

// LockFile is the format `locked` rules read and `pullbroker pin export`
// writes: image references to digests, meant to live in Git.
type LockFile struct {
	Pins map[string]digest.Digest `json:"pins"`
}

// ReadLockFile reads and validates a lock file, keyed by the normalized
// image reference ("docker.io/library/nginx:1.27").
func ReadLockFile(cfg *config.Config, file string) (map[string]digest.Digest, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	var lf LockFile
	if err := yaml.UnmarshalStrict(b, &lf); err != nil {
		return nil, fmt.Errorf("lock file %s: %w", file, err)
	}
	out := make(map[string]digest.Digest, len(lf.Pins))
	for ref, d := range lf.Pins {
		img, err := ParseImage(cfg, ref)
		if err != nil {
			return nil, fmt.Errorf("lock file %s: %w", file, err)
		}
		if img.Tag == "" || img.Digest != "" {
			return nil, fmt.Errorf("lock file %s: %q must be a tag reference without a digest", file, ref)
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("lock file %s: %s: bad digest %q: %v", file, ref, d, err)
		}
		out[img.String()] = d
	}
	return out, nil
}

// pinRules matches tags to the configured pin rules.
type pinRules struct {
	rules []config.PinRule
	// repos and tags are the rules' compiled globs, by rule index.
	repos, tags []glob.Pattern
	// locked holds each locked rule's lock file, by rule index.
	locked map[int]map[string]digest.Digest
}

func loadPinRules(cfg *config.Config) (*pinRules, error) {
	pr := &pinRules{rules: cfg.Pins, locked: map[int]map[string]digest.Digest{}}
	for i, r := range cfg.Pins {
		repo, err := glob.Compile(orAny(r.Repository))
		if err != nil {
			return nil, fmt.Errorf("pins[%d].repository: %w", i, err)
		}
		tag, err := glob.Compile(orAny(r.Tag))
		if err != nil {
			return nil, fmt.Errorf("pins[%d].tag: %w", i, err)
		}
		pr.repos, pr.tags = append(pr.repos, repo), append(pr.tags, tag)
		if r.Policy != PolicyLocked {
			continue
		}
		pins, err := ReadLockFile(cfg, r.LockFile)
		if err != nil {
			return nil, fmt.Errorf("pins[%d].lockFile: %w", i, err)
		}
		pr.locked[i] = pins
	}
	return pr, nil
}

// match returns the first rule for the tag, and its index; -1 for none.
func (pr *pinRules) match(registry, repo, tag string) (config.PinRule, int) {
	for i, r := range pr.rules {
		if r.Registry != "" && r.Registry != registry {
			continue
		}
		if !pr.repos[i].Match(repo) || !pr.tags[i].Match(tag) {
			continue
		}
		return r, i
	}
	return config.PinRule{}, -1
}

// orAny makes an empty glob match every name, at any depth.
func orAny(glob string) string {
	if glob == "" {
		return "**"
	}
	return glob
}

// pinnedManifest answers a tag from a pin or a locked rule, with no
// upstream request for the tag. ok is false when neither applies.
func (h *Handler) pinnedManifest(ctx context.Context, rt *route, rule config.PinRule, ruleIndex int) (res manifestResult, ok bool, apiErr *apiError) {
	var dgst digest.Digest
	pin, err := h.store.GetPin(ctx, rt.registry, rt.repository, rt.reference)
	switch {
	case err == nil:
		dgst = pin.Digest
	case !errors.Is(err, cache.ErrNotFound):
		return manifestResult{}, false, internalError(err)
	case rule.Policy == PolicyLocked:
		img := Image{Registry: rt.registry, Repository: rt.repository, Tag: rt.reference}
		d, found := h.pins.locked[ruleIndex][img.String()]
		if !found {
			return manifestResult{}, false, newAPIError(http.StatusNotFound, v2.ErrorCodeManifestUnknown,
				"%s is locked by pins[%d] but its lock file %s has no digest for it", img, ruleIndex, rule.LockFile)
		}
		dgst = d
	default:
		return manifestResult{}, false, nil
	}
	digestRoute := *rt
	digestRoute.reference = dgst.String()
	res, apiErr = h.manifestByDigest(ctx, &digestRoute, nil)
	if apiErr != nil {
		return manifestResult{}, false, apiErr
	}
	res.outcome = outcomePinned
	return res, true, nil
}

// stick records the first resolution of a tag under a sticky rule.
func (h *Handler) stick(ctx context.Context, rt *route, m cache.Manifest) {
	err := h.store.PutPin(ctx, cache.Pin{
		Registry: rt.registry, Repository: rt.repository, Tag: rt.reference,
		Digest: m.Digest, MediaType: m.MediaType, Policy: PolicySticky, PinnedAt: h.now().UTC(),
	})
	if err != nil {
		h.log.Error("could not record sticky pin; the tag will be resolved again", "image", rt.registry+"/"+rt.repository+":"+rt.reference, "error", err)
	}
}
