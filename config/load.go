package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

//go:embed default.yaml
var defaultYAML []byte

// EnvPrefix prefixes environment overrides: PULLBROKER_LISTEN_ADDR
// overrides listen.addr.
const EnvPrefix = "PULLBROKER"

// Load reads the embedded default, merges the file at path over it (none
// when path is empty), applies PULLBROKER_* environment overrides, fills in
// per-upstream defaults and validates the result. Errors name the key.
func Load(path string) (*Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(defaultYAML)); err != nil {
		return nil, fmt.Errorf("config: embedded default: %w", err)
	}
	if path != "" {
		v.SetConfigFile(path)
		if err := v.MergeInConfig(); err != nil {
			return nil, fmt.Errorf("config: reading %s: %w", path, err)
		}
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	var c Config
	err := v.UnmarshalExact(&c, func(dc *mapstructure.DecoderConfig) {
		dc.DecodeHook = decodeHooks()
	})
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", describe(path), decodeError(err))
	}
	// Before the public upstreams are merged in, which replaces by name.
	if err := duplicateUpstreams(c.Upstreams); err != nil {
		return nil, fmt.Errorf("config %s: %w", describe(path), err)
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", describe(path), blameEnv(err))
	}
	return &c, nil
}

// duplicateUpstreams refuses two upstreams of the file with one name or
// alias: the later would silently win.
func duplicateUpstreams(ups []Upstream) error {
	var errs []error
	seen := map[string]string{}
	for i, u := range ups {
		key := fmt.Sprintf("upstreams[%d]", i)
		for _, n := range append([]string{u.Name}, u.Aliases...) {
			if n == "" {
				continue
			}
			if prev, dup := seen[n]; dup {
				errs = append(errs, fmt.Errorf("%s: %q is already the name or an alias of %s", key, n, prev))
				continue
			}
			seen[n] = key
		}
	}
	return errors.Join(errs...)
}

func describe(path string) string {
	if path == "" {
		return "(embedded default)"
	}
	return path
}

// applyDefaults merges the public upstreams and fills unset tuning.
func (c *Config) applyDefaults() {
	if !c.DisableDefaultUpstreams {
		merged := PublicUpstreams()
		for _, u := range c.Upstreams {
			replaced := false
			for i := range merged {
				if merged[i].Name == u.Name {
					// Naming a public registry to add credentials should
					// not lose its endpoint and aliases.
					if u.Endpoint == "" {
						u.Endpoint = merged[i].Endpoint
					}
					if u.Aliases == nil {
						u.Aliases = merged[i].Aliases
					}
					merged[i] = u
					replaced = true
				}
			}
			if !replaced {
				merged = append(merged, u)
			}
		}
		c.Upstreams = merged
	}
	if c.Storage.Driver == "filesystem" && c.Storage.Parameters["rootdirectory"] == nil {
		if c.Storage.Parameters == nil {
			c.Storage.Parameters = map[string]any{}
		}
		c.Storage.Parameters["rootdirectory"] = DefaultFilesystemRoot
	}
	if c.Storage.Fills.Timeout == 0 {
		c.Storage.Fills.Timeout = DefaultFillTimeout
	}
	if c.Storage.Fills.StallTimeout == 0 {
		c.Storage.Fills.StallTimeout = DefaultFillStallTimeout
	}
	if c.Storage.Fills.MaxConcurrent == 0 {
		c.Storage.Fills.MaxConcurrent = DefaultMaxConcurrentFills
	}
	le := &c.Cluster.LeaderElection
	if le.Backend == "" {
		le.Backend = LeaderElectionStorage
	}
	if le.LeaseDuration == 0 {
		le.LeaseDuration = DefaultLeaseDuration
	}
	if le.RenewDeadline == 0 {
		le.RenewDeadline = DefaultRenewDeadline
	}
	if le.RetryPeriod == 0 {
		le.RetryPeriod = DefaultRetryPeriod
	}
	if le.LeaseName == "" {
		le.LeaseName = DefaultLeaseName
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.TagTTL == 0 {
			u.TagTTL = DefaultTagTTL
		}
		if u.DialTimeout == 0 {
			u.DialTimeout = DefaultDialTimeout
		}
		if u.ResponseTimeout == 0 {
			u.ResponseTimeout = DefaultResponseTimeout
		}
		if u.WorkTimeout == 0 {
			u.WorkTimeout = DefaultWorkTimeout
		}
	}
}
