package proxy

import (
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

// Image is an image reference resolved against the configured upstreams:
// the upstream's canonical name, the repository as the upstream names it,
// and a tag, a digest or both.
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

// ParseImage resolves "nginx:1.27", "docker.io/library/nginx:1.27",
// "ghcr.io/org/app@sha256:…" or "host:5000/app:tag@sha256:…" the way the
// proxy resolves request paths: Docker Hub normalization, the default
// upstream for names without a registry, and only configured registries.
// A reference with neither tag nor digest means tag "latest".
func ParseImage(cfg *config.Config, ref string) (Image, error) {
	var img Image
	name := ref
	if at := strings.LastIndex(name, "@"); at >= 0 {
		d, err := digest.Parse(name[at+1:])
		if err != nil {
			return Image{}, fmt.Errorf("image %q: bad digest: %v", ref, err)
		}
		img.Digest, name = d, name[:at]
	}
	if colon := strings.LastIndex(name, ":"); colon > strings.LastIndex(name, "/") {
		img.Tag, name = name[colon+1:], name[:colon]
		if !validTag(img.Tag) {
			return Image{}, fmt.Errorf("image %q: %q is not a valid tag", ref, img.Tag)
		}
	}
	if img.Tag == "" && img.Digest == "" {
		img.Tag = "latest"
	}
	rt := &route{}
	if apiErr := rt.resolveName(cfg, name, nil); apiErr != nil {
		return Image{}, fmt.Errorf("image %q: %s", ref, apiErr.err.Message)
	}
	img.Registry, img.Repository = rt.registry, rt.repository
	return img, nil
}
