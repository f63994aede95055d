// Package rewrite turns image references into references served by the
// pullbroker proxy.
//
// A cluster can send its pulls to the proxy in two ways. In rewrite mode the
// image a Pod names is changed, by the admission webhook (package
// rewrite/webhook) or ahead of time in manifests (package rewrite/manifests),
// from "nginx:1.27" to "<proxyHost>/docker.io/library/nginx:1.27". In mirror
// mode nothing in the Pod changes and the node's container runtime is told to
// ask the proxy first (package rewrite/nodeconfig writes containerd hosts.toml
// and CRI-O registries.conf).
//
// This package holds what both need: reference normalization exactly as the
// runtimes do it, and the rules that decide which images move to which proxy
// prefix.
package rewrite

import (
	"github.com/distribution/reference"
)

// Normalize parses an image reference the way kubelet, containerd and CRI-O
// do (they all use distribution's reference grammar or a copy of it) and
// returns it fully qualified:
//
//	nginx                          → docker.io/library/nginx:latest
//	index.docker.io/nginx          → docker.io/library/nginx:latest
//	localhost:5000/app             → localhost:5000/app:latest
//	ghcr.io/o/app:v1@sha256:…      → ghcr.io/o/app:v1@sha256:… (tag and digest kept)
//
// The default tag "latest" is added only when the reference has neither a
// tag nor a digest, as the runtimes do.
func Normalize(image string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return nil, err
	}
	return reference.TagNameOnly(named), nil
}
