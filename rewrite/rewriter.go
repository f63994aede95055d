package rewrite

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/glob"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// Rule sends the images of one registry to a proxy prefix:
// "<Registry>/<repository>" becomes "<Prefix>/<repository>".
type Rule struct {
	// Registry is the registry as images name it: "docker.io", "ghcr.io",
	// "registry.example.com:5000". An alias of a configured upstream
	// ("index.docker.io") means that upstream.
	Registry string
	// Prefix is "host[:port][/path]". The default rule of an upstream is
	// "<proxyHost>/<registry path component>".
	Prefix string
}

// Options configure a Rewriter.
type Options struct {
	// ProxyHost is "host[:port]" under which nodes reach the proxy, as it
	// is written in rewritten images. It must look like a registry host to
	// a runtime (contain "." or ":" or be "localhost"); otherwise
	// "pullbroker/docker.io/nginx" would be read as a Docker Hub repository.
	// Every configured upstream is rewritten to "<ProxyHost>/<registry>"
	// unless Registries limits them or Rules says otherwise. Empty means
	// only Rules apply.
	ProxyHost string
	// ProxyAliases are other hosts of the same proxy. Images already on
	// one of them (or on ProxyHost) are left alone.
	ProxyAliases []string
	// Upstreams are the registries the proxy serves, with their aliases.
	Upstreams []config.Upstream
	// Registries, when not empty, limits the default rules to these
	// upstreams (names or aliases).
	Registries []string
	// Rules add registries or replace the default prefix of one.
	Rules []Rule
	// ExcludeImages are patterns of fully qualified image names (no tag or
	// digest: "docker.io/library/nginx") that are never rewritten. "*"
	// matches within one path component, "**" any number of components:
	// "docker.io/library/*", "ghcr.io/myorg/**", "**/pause".
	ExcludeImages []string
	// Resolver, when set, resolves tags to digests so that rewritten images
	// are written "…:tag@sha256:…".
	Resolver Resolver
}

// Rewriter rewrites image references to the proxy. It is safe for
// concurrent use.
type Rewriter struct {
	proxyHosts    map[string]bool   // lowercased hosts whose images are left alone
	prefixes      map[string]string // canonical registry → prefix
	upstreamNames map[string]string // lowercased name or alias → canonical name
	exclude       []glob.Pattern
	resolver      Resolver
}

// New checks the options and builds a Rewriter.
func New(opts Options) (*Rewriter, error) {
	r := &Rewriter{
		proxyHosts:    map[string]bool{},
		prefixes:      map[string]string{},
		upstreamNames: map[string]string{},
		resolver:      opts.Resolver,
	}
	for _, u := range opts.Upstreams {
		r.upstreamNames[strings.ToLower(u.Name)] = u.Name
		for _, a := range u.Aliases {
			r.upstreamNames[strings.ToLower(a)] = u.Name
		}
	}

	if opts.ProxyHost != "" {
		if _, err := parsePrefix(opts.ProxyHost); err != nil || strings.Contains(opts.ProxyHost, "/") {
			return nil, fmt.Errorf("proxy host %q: must be host[:port] that a runtime reads as a registry (with a '.' or ':' or localhost)", opts.ProxyHost)
		}
		r.proxyHosts[strings.ToLower(opts.ProxyHost)] = true
		selected, err := config.SelectUpstreams(opts.Upstreams, opts.Registries)
		if err != nil {
			return nil, err
		}
		for _, u := range selected {
			name := u.Name
			component, err := registryname.ToPathComponent(name)
			if err != nil {
				return nil, fmt.Errorf("upstream %q: %w; give it an explicit rule or leave it out", name, err)
			}
			r.prefixes[name] = opts.ProxyHost + "/" + component
		}
	}
	for _, a := range opts.ProxyAliases {
		if _, err := parsePrefix(a); err != nil || strings.Contains(a, "/") {
			return nil, fmt.Errorf("proxy alias %q: must be host[:port] that a runtime reads as a registry", a)
		}
		r.proxyHosts[strings.ToLower(a)] = true
	}
	for _, rule := range opts.Rules {
		if _, err := parsePrefix(rule.Prefix); err != nil {
			return nil, fmt.Errorf("rule for %q: prefix %q: %w", rule.Registry, rule.Prefix, err)
		}
		registry, err := r.canonicalRegistry(rule.Registry)
		if err != nil {
			return nil, fmt.Errorf("rule for %q: %w", rule.Registry, err)
		}
		r.prefixes[registry] = strings.TrimSuffix(rule.Prefix, "/")
	}
	if len(r.prefixes) == 0 {
		return nil, errors.New("nothing to rewrite: set a proxy host with at least one upstream, or rules")
	}
	for _, p := range opts.ExcludeImages {
		g, err := glob.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("exclude pattern %q: %w", p, err)
		}
		r.exclude = append(r.exclude, g)
	}
	return r, nil
}

// canonicalRegistry maps a registry as written in a rule to the name images
// are matched with: the configured upstream's name for a name or alias, the
// runtimes' normalization otherwise ("index.docker.io" is "docker.io").
func (r *Rewriter) canonicalRegistry(registry string) (string, error) {
	if name, ok := r.upstreamNames[strings.ToLower(registry)]; ok {
		return name, nil
	}
	// Two path components, or docker.io would add "library/" and the
	// check below could not tell a registry from a Docker Hub namespace.
	named, err := reference.ParseNormalizedNamed(registry + "/x/y")
	if err != nil || reference.Path(named) != "x/y" {
		return "", fmt.Errorf("%q is not a registry host[:port]", registry)
	}
	return reference.Domain(named), nil
}

// parsePrefix checks that "host[:port][/path]" reads, to a runtime, as that
// host followed by that path, and returns the host.
func parsePrefix(prefix string) (string, error) {
	prefix = strings.TrimSuffix(prefix, "/")
	host, _, _ := strings.Cut(prefix, "/")
	named, err := reference.ParseNormalizedNamed(prefix + "/x")
	if err != nil {
		return "", fmt.Errorf("not a valid image name prefix: %w", err)
	}
	if reference.Domain(named) != host || named.Name() != prefix+"/x" {
		return "", fmt.Errorf("a runtime would read %q as %q: the host needs a '.' or ':' or must be localhost", prefix+"/x", named.Name())
	}
	return host, nil
}

// Result is the outcome of rewriting one image.
type Result struct {
	// Image is the image to use: the rewritten reference when Changed,
	// otherwise the input exactly as given.
	Image string
	// Changed reports whether Image differs from the input.
	Changed bool
	// Reason says, for logs, why an image was left alone; empty when
	// Changed.
	Reason string
	// ResolveErr is set when tag resolution was asked for and failed. The
	// image is then rewritten with its tag only: a Pod is never blocked
	// because the proxy could not be asked.
	ResolveErr error
}

// Reasons an image is left alone.
const (
	ReasonInvalid     = "not a valid image reference"
	ReasonOnProxy     = "already on the proxy"
	ReasonExcluded    = "matches an exclude pattern"
	ReasonNoRule      = "registry is not rewritten"
	ReasonUnencodable = "the rewritten reference would not be valid"
)

// Rewrite returns the proxy reference for image. It never fails: an image it
// cannot or should not rewrite comes back unchanged with the reason. It is
// idempotent: rewriting a rewritten image changes nothing.
//
// ctx bounds tag resolution only.
func (r *Rewriter) Rewrite(ctx context.Context, image string) Result {
	named, err := Normalize(image)
	if err != nil {
		return Result{Image: image, Reason: ReasonInvalid + ": " + err.Error()}
	}
	if r.onProxy(named) {
		return Result{Image: image, Reason: ReasonOnProxy}
	}
	if r.excluded(named) {
		return Result{Image: image, Reason: ReasonExcluded}
	}
	registry := reference.Domain(named)
	if name, ok := r.upstreamNames[strings.ToLower(registry)]; ok {
		registry = name
	}
	prefix, ok := r.prefixes[registry]
	if !ok {
		return Result{Image: image, Reason: ReasonNoRule}
	}

	// Re-parsing the joined string applies the whole grammar once more,
	// the length limit included, and a rewritten Docker Hub alias
	// ("registry-1.docker.io/nginx") gets its "library/" like docker.io.
	target := prefix + "/" + reference.Path(named)
	if registry == dockerHub && !strings.Contains(reference.Path(named), "/") {
		target = prefix + "/library/" + reference.Path(named)
	}
	if tagged, ok := named.(reference.Tagged); ok {
		target += ":" + tagged.Tag()
	}
	if digested, ok := named.(reference.Digested); ok {
		target += "@" + digested.Digest().String()
	}
	rewritten, err := reference.ParseNamed(target)
	if err != nil {
		return Result{Image: image, Reason: ReasonUnencodable + ": " + err.Error()}
	}

	res := Result{Image: rewritten.String(), Changed: true}
	if r.resolver != nil {
		res.Image, res.ResolveErr = r.pin(ctx, rewritten)
	}
	return res
}

// dockerHub is the canonical name runtimes give Docker Hub.
const dockerHub = "docker.io"

// pin adds the digest the resolver reports for a tagged reference that has
// none. On failure it returns the reference unpinned and the error.
func (r *Rewriter) pin(ctx context.Context, ref reference.Named) (string, error) {
	if _, ok := ref.(reference.Digested); ok {
		return ref.String(), nil
	}
	tagged, ok := ref.(reference.NamedTagged)
	if !ok {
		return ref.String(), nil
	}
	dgst, err := r.resolver.Resolve(ctx, tagged)
	if err != nil {
		return ref.String(), fmt.Errorf("resolving %s: %w", ref, err)
	}
	pinned, err := reference.WithDigest(tagged, dgst)
	if err != nil {
		return ref.String(), fmt.Errorf("resolving %s: resolver answered %q: %w", ref, dgst, err)
	}
	return pinned.String(), nil
}

// onProxy reports whether the image already names the proxy: its host is the
// proxy or an alias of it, or its name starts with a rule's prefix.
func (r *Rewriter) onProxy(named reference.Named) bool {
	if r.proxyHosts[strings.ToLower(reference.Domain(named))] {
		return true
	}
	name := named.Name()
	for _, prefix := range r.prefixes {
		if strings.HasPrefix(name, prefix+"/") {
			return true
		}
	}
	return false
}

func (r *Rewriter) excluded(named reference.Named) bool {
	name := named.Name()
	for _, g := range r.exclude {
		if g.Match(name) {
			return true
		}
	}
	return false
}
