package tags

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// Image is a reference resolved against the configured upstreams: the
// upstream's canonical name, the repository as the upstream names it, and
// a tag, a digest or both.
type Image struct {
	Registry   string
	Repository string
	Tag        string
	Digest     digest.Digest
}

// String is the reference as clients pull it through the proxy's prefix
// form, without the proxy host.
func (i Image) String() string {
	s := i.Registry + "/" + i.Repository
	if i.Tag != "" {
		s += ":" + i.Tag
	}
	if i.Digest != "" {
		s += "@" + i.Digest.String()
	}
	return s
}

// NameError is a name that does not resolve to a repository of a
// configured upstream.
type NameError struct {
	// Invalid is true when the name breaks the repository grammar, false
	// when it is well formed but names no configured registry.
	Invalid bool
	Reason  string
}

func (e *NameError) Error() string { return e.Reason }

// ParseImage resolves "nginx:1.27", "docker.io/library/nginx:1.27",
// "ghcr.io/org/app@sha256:…" or "host:5000/app:tag@sha256:…" the way the
// proxy resolves request paths (see ResolveName). A reference with neither
// tag nor digest means tag "latest".
func ParseImage(cfg *config.Config, ref string) (Image, error) {
	parsed, err := reference.Parse(ref)
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", ref, err)
	}
	named, ok := parsed.(reference.Named)
	if !ok {
		return Image{}, fmt.Errorf("image %q: a repository name is required", ref)
	}
	var img Image
	if tagged, ok := parsed.(reference.Tagged); ok {
		img.Tag = tagged.Tag()
	}
	if digested, ok := parsed.(reference.Digested); ok {
		img.Digest = digested.Digest()
	}
	if img.Tag == "" && img.Digest == "" {
		img.Tag = "latest"
	}
	u, repo, err := ResolveName(cfg, named.Name(), "")
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", ref, err)
	}
	img.Registry, img.Repository = u.Name, repo
	return img, nil
}

// ResolveName picks the upstream of a repository name, as a request path or
// an image reference gives it: containerd's ns (when not empty), else a
// first path component that names a configured registry (as is, or in the
// "host_5000" form), else the default upstream. Docker Hub names get
// "library/". It never resolves to a registry that is not configured, so a
// client cannot choose where the proxy connects.
func ResolveName(cfg *config.Config, name, ns string) (config.Upstream, string, error) {
	var registry, repo string
	first, rest, hasRest := strings.Cut(name, "/")
	switch {
	case ns != "":
		registry, repo = ns, name
	case hasRest && configuredRegistry(cfg, first) != "":
		registry, repo = configuredRegistry(cfg, first), rest
	case hasRest && looksLikeRegistry(first):
		registry, repo = first, rest
	case cfg.DefaultUpstream != "":
		registry, repo = cfg.DefaultUpstream, name
	default:
		return config.Upstream{}, "", &NameError{Reason: fmt.Sprintf(
			"%q names no registry and no default upstream is configured: use <registry>/<repository>", name)}
	}
	u, ok := cfg.Upstream(registry)
	if !ok {
		return config.Upstream{}, "", &NameError{Reason: fmt.Sprintf("registry %q is not a configured upstream of this proxy", registry)}
	}
	if u.Name == "docker.io" && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if err := validRepository(repo); err != nil {
		return config.Upstream{}, "", err
	}
	return u, repo, nil
}

// validRepository applies the distribution spec's repository path grammar.
// reference.WithName checks components and length, but it reads a first
// component with a port or upper case as a host, which a repository path
// must not have: "127.0.0.1:6098/library/alpine" under an upstream is not a
// repository there.
func validRepository(repo string) error {
	if _, err := reference.WithName(repo); err != nil || strings.ToLower(repo) != repo || strings.ContainsAny(repo, ":[]") {
		return &NameError{Invalid: true, Reason: fmt.Sprintf(
			"%q is not a valid repository name (lowercase letters, digits and separators . _ __ - /)", repo)}
	}
	return nil
}

// configuredRegistry returns the upstream a first path component names,
// either as is or in the "host_5000" form that image references need for
// a registry with a port; "" when it names none.
func configuredRegistry(cfg *config.Config, component string) string {
	for _, name := range []string{component, registryname.FromPathComponent(component)} {
		if u, ok := cfg.Upstream(name); ok {
			return u.Name
		}
	}
	return ""
}

// looksLikeRegistry applies the rule image references use: a first
// component with a '.' or ':' or equal to "localhost" is a registry host.
func looksLikeRegistry(component string) bool {
	return strings.ContainsAny(component, ".:") || component == "localhost"
}
