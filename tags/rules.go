package tags

import (
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/glob"
)

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
		if r.Policy != config.PolicyLocked {
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
func (pr *pinRules) match(img Image) (config.PinRule, int) {
	for i, r := range pr.rules {
		if r.Registry != "" && r.Registry != img.Registry {
			continue
		}
		if !pr.repos[i].Match(img.Repository) || !pr.tags[i].Match(img.Tag) {
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

// LockedRoots reads the lock files of cfg's locked rules, as the Resolver
// does at start, and returns their digests as the roots that cache
// eviction and GC must keep (cache.Options.Roots): a locked tag is
// answered from its lock file with no upstream request, so its image has
// to stay cached.
func LockedRoots(cfg *config.Config) ([]cache.Root, error) {
	rules, err := loadPinRules(cfg)
	if err != nil {
		return nil, err
	}
	var roots []cache.Root
	for _, pins := range rules.locked {
		for ref, d := range pins {
			// ReadLockFile keyed the map by the normalized reference.
			img, err := ParseImage(cfg, ref)
			if err != nil {
				return nil, err
			}
			roots = append(roots, cache.Root{Registry: img.Registry, Repository: img.Repository, Digest: d})
		}
	}
	return roots, nil
}
