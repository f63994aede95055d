package registryname

import (
	"strings"
	"testing"
)

func TestPathComponentRoundTrip(t *testing.T) {
	for _, tc := range []struct{ registry, want string }{
		{"docker.io", "docker.io"},
		{"ghcr.io", "ghcr.io"},
		{"registry.example.com:5000", "registry.example.com_5000"},
		{"Registry.Example.com:5000", "registry.example.com_5000"},
		{"localhost:5000", "localhost_5000"},
		{"10.0.0.1:5000", "10.0.0.1_5000"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
	} {
		got, err := ToPathComponent(tc.registry)
		if err != nil || got != tc.want {
			t.Errorf("ToPathComponent(%q) = %q, %v; want %q", tc.registry, got, err, tc.want)
		}
		if back := FromPathComponent(got); back != strings.ToLower(tc.registry) {
			t.Errorf("FromPathComponent(%q) = %q, want %q", got, back, strings.ToLower(tc.registry))
		}
	}
	for _, bad := range []string{"[::1]:5000", "a/b", "", "-x.example"} {
		if got, err := ToPathComponent(bad); err == nil {
			t.Errorf("ToPathComponent(%q) = %q, want an error", bad, got)
		}
	}
	// Components without a numeric tail are not ports.
	for _, c := range []string{"docker.io", "a_b", "a_", "_5000"} {
		if got := FromPathComponent(c); got != c {
			t.Errorf("FromPathComponent(%q) = %q, want it unchanged", c, got)
		}
	}
}
