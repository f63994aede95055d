// Package registryname writes a registry name (host[:port]) as a single
// repository path component and reads it back. The image-prefix form
// "<proxy>/<registry>/<repository>" and the cache's storage paths both need
// it, since neither may contain ":".
package registryname

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// portSeparator stands for the ":" between a registry host and its
// port when the registry is written as a repository path component, where
// the reference grammar allows no colon. A host name cannot contain "_"
// (neither DNS nor the reference grammar's domain allows it), so the
// encoding is unambiguous.
const portSeparator = "_"

// ToPathComponent returns how a registry is written as the first path
// component of the image-prefix form "<proxyHost>/<component>/<repository>".
// Most names are unchanged ("docker.io", "ghcr.io"); a port is joined with
// "_" ("registry.example.com:5000" → "registry.example.com_5000") and the
// host is lowercased, because a repository path may hold neither ":" nor
// upper case. Registries that still cannot be written as a path component
// (IPv6 literals) are an error.
func ToPathComponent(registry string) (string, error) {
	component := strings.ToLower(registry)
	if i := strings.LastIndexByte(component, ':'); i >= 0 && !strings.Contains(component, "]") {
		component = component[:i] + portSeparator + component[i+1:]
	}
	// WithName applies the repository path grammar; "x/" keeps the
	// component from being taken for a domain.
	if _, err := reference.WithName("x/" + component); err != nil || strings.Contains(component, "/") {
		return "", fmt.Errorf("registry %q cannot be written as a repository path component", registry)
	}
	return component, nil
}

// FromPathComponent is the inverse of ToPathComponent: it
// turns "registry.example.com_5000" back into "registry.example.com:5000".
// The proxy needs it to read the image-prefix form of a registry with a port.
func FromPathComponent(component string) string {
	i := strings.LastIndex(component, portSeparator)
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
