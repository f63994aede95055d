package rewrite

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

const (
	testProxy = "pullbroker.example:5000"
	testSum   = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	otherSum  = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// testUpstreams are the embedded defaults plus a registry with a port, the
// case the image-prefix form has to encode.
func testUpstreams() []config.Upstream {
	return append(config.PublicUpstreams(),
		config.Upstream{Name: "registry.example.com:5000", Endpoint: "https://registry.example.com:5000"},
	)
}

func mustNew(t testing.TB, opts Options) *Rewriter {
	t.Helper()
	if opts.Upstreams == nil {
		opts.Upstreams = testUpstreams()
	}
	r, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestNormalize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27"},
		{"library/nginx", "docker.io/library/nginx:latest"},
		{"docker.io/nginx", "docker.io/library/nginx:latest"},
		{"index.docker.io/nginx", "docker.io/library/nginx:latest"},
		{"index.docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"bitnami/redis", "docker.io/bitnami/redis:latest"},
		{"nginx@" + testSum, "docker.io/library/nginx@" + testSum},
		{"nginx:1.27@" + testSum, "docker.io/library/nginx:1.27@" + testSum},
		{"ghcr.io/org/app", "ghcr.io/org/app:latest"},
		{"localhost/app", "localhost/app:latest"},
		{"localhost:5000/app:v1", "localhost:5000/app:v1"},
		{"registry.example.com:5000/a/b/c:1", "registry.example.com:5000/a/b/c:1"},
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"},
		{"[::1]:5000/app", "[::1]:5000/app:latest"},
		// Only docker.io gets library/; another registry keeps one component.
		{"quay.io/app", "quay.io/app:latest"},
		// An upper-case first component is a host, not a Docker Hub user.
		{"Registry.Example/app", "Registry.Example/app:latest"},
	} {
		got, err := Normalize(tc.in)
		if err != nil {
			t.Errorf("Normalize(%q): %v", tc.in, err)
			continue
		}
		if got.String() != tc.want {
			t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "Nginx", "nginx:", "nginx@sha256:abc", " nginx", "a//b", strings.Repeat("a", 64)} {
		if got, err := Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", bad, got)
		}
	}
}

func TestRewriteDefaultRules(t *testing.T) {
	r := mustNew(t, Options{ProxyHost: testProxy, ExcludeImages: []string{"docker.io/library/busybox", "ghcr.io/private/**"}})
	const p = testProxy + "/"
	for _, tc := range []struct {
		in, want string
		reason   string // when left alone
	}{
		{in: "nginx", want: p + "docker.io/library/nginx:latest"},
		{in: "nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		{in: "library/nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		{in: "docker.io/nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		{in: "index.docker.io/nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		{in: "index.docker.io/library/nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		// A configured alias that the runtimes do not normalize.
		{in: "registry-1.docker.io/nginx:1.27", want: p + "docker.io/library/nginx:1.27"},
		{in: "registry-1.docker.io/bitnami/redis", want: p + "docker.io/bitnami/redis:latest"},
		{in: "bitnami/redis:7", want: p + "docker.io/bitnami/redis:7"},
		{in: "nginx@" + testSum, want: p + "docker.io/library/nginx@" + testSum},
		{in: "nginx:1.27@" + testSum, want: p + "docker.io/library/nginx:1.27@" + testSum},
		{in: "ghcr.io/org/app:v1", want: p + "ghcr.io/org/app:v1"},
		{in: "gcr.io/distroless/static:nonroot", want: p + "gcr.io/distroless/static:nonroot"},
		{in: "registry.k8s.io/pause:3.10", want: p + "registry.k8s.io/pause:3.10"},
		{in: "public.ecr.aws/docker/library/alpine", want: p + "public.ecr.aws/docker/library/alpine:latest"},
		{in: "quay.io/prometheus/prometheus:v3.0.0", want: p + "quay.io/prometheus/prometheus:v3.0.0"},
		{in: "registry.example.com:5000/team/app:1", want: p + "registry.example.com_5000/team/app:1"},
		{in: "REGISTRY.example.com:5000/team/app", want: p + "registry.example.com_5000/team/app:latest"},

		{in: p + "docker.io/library/nginx:1.27", reason: ReasonOnProxy},
		{in: p + "docker.io/library/nginx", reason: ReasonOnProxy},
		{in: "PullBroker.Example:5000/docker.io/library/nginx", reason: ReasonOnProxy},
		{in: p + "something/else", reason: ReasonOnProxy},
		{in: "localhost/app", reason: ReasonNoRule},
		{in: "localhost:5000/app", reason: ReasonNoRule},
		{in: "example.com/app:1", reason: ReasonNoRule},
		{in: "quay.io:443/app", reason: ReasonNoRule},
		{in: "busybox", reason: ReasonExcluded},
		{in: "docker.io/library/busybox:1.36", reason: ReasonExcluded},
		{in: "ghcr.io/private/a/b:1", reason: ReasonExcluded},
		{in: "Nginx", reason: ReasonInvalid},
		{in: "", reason: ReasonInvalid},
		{in: "nginx:", reason: ReasonInvalid},
		{in: "nginx:1.27@sha256:short", reason: ReasonInvalid},
		// The path fits the 255-byte limit by itself but not with the
		// registry component in front.
		{in: "ghcr.io/" + strings.Repeat("a", 250), reason: ReasonUnencodable},
	} {
		got := r.Rewrite(context.Background(), tc.in)
		if tc.reason != "" {
			if got.Changed || got.Image != tc.in || !strings.HasPrefix(got.Reason, tc.reason) {
				t.Errorf("Rewrite(%q) = %+v, want it left alone because %q", tc.in, got, tc.reason)
			}
			continue
		}
		if !got.Changed || got.Image != tc.want || got.Reason != "" {
			t.Errorf("Rewrite(%q) = %+v, want %q", tc.in, got, tc.want)
			continue
		}
		if again := r.Rewrite(context.Background(), got.Image); again.Changed || again.Image != got.Image {
			t.Errorf("Rewrite(Rewrite(%q)) = %+v, want it unchanged", tc.in, again)
		}
	}
}

func TestRewriteRules(t *testing.T) {
	r := mustNew(t, Options{
		ProxyHost:    testProxy,
		ProxyAliases: []string{"localhost:30500"},
		Registries:   []string{"index.docker.io", "ghcr.io"},
		Rules: []Rule{
			{Registry: "ghcr.io", Prefix: "mirror.internal/ghcr/"},
			{Registry: "example.com", Prefix: "mirror.internal:8443/ex"},
		},
	})
	for _, tc := range []struct{ in, want string }{
		{"nginx", testProxy + "/docker.io/library/nginx:latest"},
		{"ghcr.io/org/app:v1", "mirror.internal/ghcr/org/app:v1"},
		{"example.com/app", "mirror.internal:8443/ex/app:latest"},
		// Not among the selected registries.
		{"quay.io/org/app:1", "quay.io/org/app:1"},
		// On the proxy under another of its names.
		{"localhost:30500/docker.io/library/nginx", "localhost:30500/docker.io/library/nginx"},
		// Already under a rule's prefix.
		{"mirror.internal/ghcr/org/app:v1", "mirror.internal/ghcr/org/app:v1"},
	} {
		got := r.Rewrite(context.Background(), tc.in)
		if got.Image != tc.want || got.Changed != (tc.in != tc.want) {
			t.Errorf("Rewrite(%q) = %+v, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRuleWithoutUpstreams: rules work for registries the proxy host does
// not cover, docker.io included (its names get "library/").
func TestRuleWithoutUpstreams(t *testing.T) {
	r := mustNew(t, Options{
		Upstreams: []config.Upstream{},
		Rules:     []Rule{{Registry: "index.docker.io", Prefix: "hub-mirror.example/hub"}},
	})
	for _, tc := range []struct{ in, want string }{
		{"nginx", "hub-mirror.example/hub/library/nginx:latest"},
		{"docker.io/bitnami/redis:7", "hub-mirror.example/hub/bitnami/redis:7"},
		{"ghcr.io/org/app", "ghcr.io/org/app"},
	} {
		if got := r.Rewrite(context.Background(), tc.in); got.Image != tc.want {
			t.Errorf("Rewrite(%q) = %+v, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for name, opts := range map[string]Options{
		// A runtime would read "pullbroker/docker.io/nginx" as a Docker Hub
		// repository.
		"proxy host without dot or port": {ProxyHost: "pullbroker"},
		"proxy host with a path":         {ProxyHost: "pullbroker.example/x"},
		"upper-case proxy path":          {Rules: []Rule{{Registry: "docker.io", Prefix: "p.example/Hub"}}},
		"rule prefix without host":       {Rules: []Rule{{Registry: "docker.io", Prefix: "mirror/hub"}}},
		"rule registry not a host":       {Rules: []Rule{{Registry: "docker.io/x", Prefix: "p.example/hub"}}},
		"rule registry a Hub namespace":  {Rules: []Rule{{Registry: "library", Prefix: "p.example/hub"}}},
		"unknown selected registry":      {ProxyHost: testProxy, Registries: []string{"nowhere.example"}},
		"bad exclude pattern":            {ProxyHost: testProxy, ExcludeImages: []string{"docker.io/[x"}},
		"nothing to rewrite":             {},
		"upstream that cannot be a path": {ProxyHost: testProxy, Upstreams: []config.Upstream{{Name: "[::1]:5000"}}},
		"bad proxy alias":                {ProxyHost: testProxy, ProxyAliases: []string{"pullbroker"}},
	} {
		if opts.Upstreams == nil {
			opts.Upstreams = testUpstreams()
		}
		if _, err := New(opts); err == nil {
			t.Errorf("%s: New(%+v) succeeded, want an error", name, opts)
		}
	}
}

// fakeResolver answers from a map of rewritten "name:tag" to digest and
// counts its calls.
type fakeResolver struct {
	digests map[string]digest.Digest
	calls   int
}

func (f *fakeResolver) Resolve(_ context.Context, ref reference.NamedTagged) (digest.Digest, error) {
	f.calls++
	if d, ok := f.digests[ref.String()]; ok {
		return d, nil
	}
	return "", errors.New("manifest unknown")
}

func TestRewriteResolvesTags(t *testing.T) {
	res := &fakeResolver{digests: map[string]digest.Digest{
		testProxy + "/docker.io/library/nginx:1.27":   testSum,
		testProxy + "/docker.io/library/nginx:latest": otherSum,
		testProxy + "/ghcr.io/org/bad:1":              "not-a-digest",
	}}
	r := mustNew(t, Options{ProxyHost: testProxy, Resolver: res})
	ctx := context.Background()

	for _, tc := range []struct {
		in, want   string
		resolveErr bool
	}{
		{in: "nginx:1.27", want: testProxy + "/docker.io/library/nginx:1.27@" + testSum},
		{in: "nginx", want: testProxy + "/docker.io/library/nginx:latest@" + otherSum},
		// A digest the image already has is kept; the resolver is not asked.
		{in: "nginx:1.27@" + otherSum, want: testProxy + "/docker.io/library/nginx:1.27@" + otherSum},
		{in: "nginx@" + otherSum, want: testProxy + "/docker.io/library/nginx@" + otherSum},
		// Unresolvable: rewritten with the tag only, and the error told.
		{in: "ghcr.io/org/missing:1", want: testProxy + "/ghcr.io/org/missing:1", resolveErr: true},
		{in: "ghcr.io/org/bad:1", want: testProxy + "/ghcr.io/org/bad:1", resolveErr: true},
	} {
		got := r.Rewrite(ctx, tc.in)
		if got.Image != tc.want || !got.Changed || (got.ResolveErr != nil) != tc.resolveErr {
			t.Errorf("Rewrite(%q) = %+v, want %q (resolve error: %v)", tc.in, got, tc.want, tc.resolveErr)
		}
	}
	before := res.calls
	if again := r.Rewrite(ctx, testProxy+"/docker.io/library/nginx:1.27@"+testSum); again.Changed {
		t.Errorf("rewriting a pinned proxy image changed it: %+v", again)
	}
	if res.calls != before {
		t.Errorf("the resolver was asked about an image already on the proxy")
	}
}

func TestPodFilter(t *testing.T) {
	f := PodFilter{ExcludeNamespaces: []string{"kube-system", "pullbroker"}}
	for _, tc := range []struct {
		name        string
		namespace   string
		labels      map[string]string
		annotations map[string]string
		skip        bool
	}{
		{name: "plain pod", namespace: "default"},
		{name: "manifest without namespace", namespace: ""},
		{name: "kube-system", namespace: "kube-system", skip: true},
		{name: "own namespace", namespace: "pullbroker", skip: true},
		{name: "opt-out label", namespace: "default", labels: map[string]string{OptOutKey: "false"}, skip: true},
		{name: "opt-out annotation", namespace: "default", annotations: map[string]string{OptOutKey: "False"}, skip: true},
		{name: "opt-in value", namespace: "default", labels: map[string]string{OptOutKey: "true"}},
		{name: "mirror pod", namespace: "default", annotations: map[string]string{MirrorPodAnnotation: "abc"}, skip: true},
	} {
		reason := f.SkipReason(tc.namespace, tc.labels, tc.annotations)
		if (reason != "") != tc.skip {
			t.Errorf("%s: SkipReason = %q, want skip %v", tc.name, reason, tc.skip)
		}
	}
}
