package tags

import (
	"fmt"

	"github.com/opencontainers/go-digest"

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
