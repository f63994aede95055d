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
	"fmt"
	"strings"

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

// registryPortSeparator stands for the ":" between a registry host and its
// port when the registry is written as a repository path component, where
// the reference grammar allows no colon. A host name cannot contain "_"
// (neither DNS nor the reference grammar's domain allows it), so the
// encoding is unambiguous.
const registryPortSeparator = "_"

// RegistryPathComponent returns how a registry is written as the first path
// component of the image-prefix form "<proxyHost>/<component>/<repository>".
// Most names are unchanged ("docker.io", "ghcr.io"); a port is joined with
// "_" ("registry.example.com:5000" → "registry.example.com_5000") and the
// host is lowercased, because a repository path may hold neither ":" nor
// upper case. Registries that still cannot be written as a path component
// (IPv6 literals) are an error.
func RegistryPathComponent(registry string) (string, error) {
	component := strings.ToLower(registry)
	if i := strings.LastIndexByte(component, ':'); i >= 0 && !strings.Contains(component, "]") {
		component = component[:i] + registryPortSeparator + component[i+1:]
	}
	// WithName applies the repository path grammar; "x/" keeps the
	// component from being taken for a domain.
	if _, err := reference.WithName("x/" + component); err != nil || strings.Contains(component, "/") {
		return "", fmt.Errorf("registry %q cannot be written as a repository path component", registry)
	}
	return component, nil
}

// RegistryFromPathComponent is the inverse of RegistryPathComponent: it
// turns "registry.example.com_5000" back into "registry.example.com:5000".
// The proxy needs it to read the image-prefix form of a registry with a port.
func RegistryFromPathComponent(component string) string {
	i := strings.LastIndex(component, registryPortSeparator)
	if i <= 0 || i == len(component)-1 {
		return component
	}
	for _, c := range component[i+1:] {
		if c < '0' || c > '9' {
			return component
		}
	}
	return component[:i] + ":" + component[i+1:]
}
