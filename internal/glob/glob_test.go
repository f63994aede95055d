package glob

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"team/*", "team/app", true},
		{"team/*", "team/app/sub", false},
		{"team/**", "team/app/sub", true},
		{"team/**", "team", true},
		{"**", "a/b/c", true},
		{"library/*", "library/nginx", true},
		{"*", "library/nginx", false},
		{"a/**/z", "a/b/c/z", true},
		{"a/**/z", "a/z", true},
		{"a/**/z", "a/b/y", false},
		{"1.*", "1.27", true},
		{"docker.io/library/nginx", "docker.io/library/nginx", true},
		{"docker.io/library/*", "docker.io/library/nginx", true},
		{"docker.io/*", "docker.io/library/nginx", false},
		{"docker.io/**", "docker.io/library/nginx", true},
		{"**/pause", "registry.k8s.io/pause", true},
		{"**/pause", "registry.k8s.io/x/pause", true},
		{"**/pause", "registry.k8s.io/pause2", false},
		{"ghcr.io/**/tools/*", "ghcr.io/a/b/tools/x", true},
		{"ghcr.io/**/tools/*", "ghcr.io/tools/x", true},
		{"ghcr.io/**", "ghcr.io", true},
		{"*.example.com:5000/**", "r.example.com:5000/a", true},
	}
	for _, tt := range tests {
		g, err := Compile(tt.pattern)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tt.pattern, err)
		}
		if got := g.Match(tt.name); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
	if _, err := Compile("a/[z"); err == nil {
		t.Error("malformed pattern compiled")
	}
}
