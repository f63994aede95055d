package podimages

import (
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/registryname"
	"github.com/pullbroker/pullbroker/rewrite"
	"github.com/pullbroker/pullbroker/tags"
)

// proxyImage is the image a Pod's reference names on the proxy, or false
// when the proxy does not serve it. A reference comes in two forms:
//
//   - the plain form a node pulls through a containerd or CRI-O mirror,
//     "nginx:1.27": normalized as the runtimes do (docker.io/library/nginx),
//     its registry must be a configured upstream;
//   - the image-prefix form the webhook writes,
//     "<proxy host>/docker.io/library/nginx:1.27": the host is the proxy
//     (any host that is not an upstream), and the first path component
//     must name a configured upstream, as in a request path.
//
// Images rewritten by a webhook rule to a prefix of another shape are not
// recognized.
func proxyImage(cfg *config.Config, ref string) (tags.Image, bool) {
	named, err := rewrite.Normalize(ref)
	if err != nil {
		return tags.Image{}, false
	}
	onProxy := named.String()
	if host := reference.Domain(named); !isUpstream(cfg, host) {
		first, _, _ := strings.Cut(reference.Path(named), "/")
		if !isUpstream(cfg, first) && !isUpstream(cfg, registryname.FromPathComponent(first)) {
			return tags.Image{}, false
		}
		onProxy = strings.TrimPrefix(onProxy, host+"/")
	}
	img, err := tags.ParseImage(cfg, onProxy)
	if err != nil {
		return tags.Image{}, false
	}
	return img, true
}

func isUpstream(cfg *config.Config, name string) bool {
	_, ok := cfg.Upstream(name)
	return ok
}

// statusDigest is the manifest digest a container status's imageID names
// for img's repository, or "" when it names none: runtimes report
// "docker.io/library/nginx@sha256:…" (containerd, CRI-O) or
// "docker-pullable://nginx@sha256:…" (dockershim), but also a bare image
// ID ("sha256:…", the config's digest), which is no manifest.
func statusDigest(cfg *config.Config, img tags.Image, imageID string) digest.Digest {
	if _, rest, ok := strings.Cut(imageID, "://"); ok {
		imageID = rest
	}
	if imageID == "" {
		return ""
	}
	ran, ok := proxyImage(cfg, imageID)
	if !ok || ran.Digest == "" || ran.Registry != img.Registry || ran.Repository != img.Repository {
		return ""
	}
	return ran.Digest
}
