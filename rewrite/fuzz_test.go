package rewrite

import (
	"context"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// FuzzRewrite checks, for any input, that rewriting never produces an
// invalid reference, keeps the digest, leaves an image alone exactly when it
// reports no change, and is idempotent. The seed corpus runs in every
// go test; explore with
//
//	go test ./rewrite -run '^$' -fuzz FuzzRewrite -fuzztime 1m
func FuzzRewrite(f *testing.F) {
	for _, seed := range []string{
		"nginx", "nginx:1.27", "library/nginx", "docker.io/nginx", "index.docker.io/nginx",
		"registry-1.docker.io/nginx", "bitnami/redis:7", "nginx@" + testSum, "nginx:1.27@" + testSum,
		"ghcr.io/org/app:v1", "registry.example.com:5000/team/app:1", "localhost/app", "localhost:5000/app",
		"[::1]:5000/app", "quay.io:443/app", "example.com/app", "Nginx", "", "nginx:", "a//b",
		testProxy + "/docker.io/library/nginx:1.27", "mirror.internal/ghcr/org/app",
		"ghcr.io/" + strings.Repeat("a", 250), "docker.io/library/busybox", "ghcr.io/a__b/c--d/e.f_g:T-1.2",
		"registry.k8s.io/pause:3.10", "REGISTRY.EXAMPLE.COM:5000/app",
	} {
		f.Add(seed)
	}
	resolver := ResolverFunc(func(_ context.Context, ref reference.NamedTagged) (digest.Digest, error) {
		// Deterministic per reference, so idempotence can be checked.
		return digest.FromString(ref.String()), nil
	})
	plain := mustNew(f, Options{ProxyHost: testProxy, ExcludeImages: []string{"docker.io/library/busybox"}})
	withRules := mustNew(f, Options{
		ProxyHost: testProxy,
		Rules:     []Rule{{Registry: "ghcr.io", Prefix: "mirror.internal/ghcr"}},
		Resolver:  resolver,
	})

	f.Fuzz(func(t *testing.T, image string) {
		for _, r := range []*Rewriter{plain, withRules} {
			got := r.Rewrite(context.Background(), image)
			if !got.Changed {
				if got.Image != image || got.Reason == "" {
					t.Fatalf("Rewrite(%q) = %+v: unchanged must return the input and a reason", image, got)
				}
				continue
			}
			out, err := reference.ParseNamed(got.Image)
			if err != nil {
				t.Fatalf("Rewrite(%q) = %q, not a canonical reference: %v", image, got.Image, err)
			}
			in, err := Normalize(image)
			if err != nil {
				t.Fatalf("Rewrite(%q) changed an image that does not parse: %v", image, err)
			}
			if d, ok := in.(reference.Digested); ok {
				if od, ok := out.(reference.Digested); !ok || od.Digest() != d.Digest() {
					t.Fatalf("Rewrite(%q) = %q lost the digest %s", image, got.Image, d.Digest())
				}
			}
			if tg, ok := in.(reference.Tagged); ok {
				if ot, ok := out.(reference.Tagged); !ok || ot.Tag() != tg.Tag() {
					t.Fatalf("Rewrite(%q) = %q lost the tag %s", image, got.Image, tg.Tag())
				}
			}
			if again := r.Rewrite(context.Background(), got.Image); again.Changed || again.Image != got.Image {
				t.Fatalf("not idempotent: %q → %q → %+v", image, got.Image, again)
			}
		}
	})
}
