package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/tags"
)

// FuzzParseRoute checks, for any request path and containerd ns, that
// parsing never panics and that a route it accepts names a configured
// upstream, a repository of the spec's grammar that resolves to the same
// place again, and a reference valid for its kind. The seed corpus
// (below and testdata/fuzz/FuzzParseRoute) runs in every go test; the test
// script fuzzes for a few seconds; explore with
//
//	go test ./proxy -run '^$' -fuzz FuzzParseRoute -fuzztime 5m
func FuzzParseRoute(f *testing.F) {
	const dgst = "sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff"
	for _, seed := range []struct{ path, ns string }{
		{"/v2/", ""}, {"/v2/_catalog", ""}, {"/v2/docker.io/library/nginx/manifests/1.27", ""},
		{"/v2/nginx/manifests/latest", ""}, {"/v2/library/nginx/manifests/1.27", "docker.io"},
		{"/v2/ghcr.io/org/team/app/blobs/" + dgst, ""}, {"/v2/127.0.0.1_5001/a/b/manifests/v1", ""},
		{"/v2/quay.io/org/app/tags/list", ""}, {"/v2/quay.io/org/app/referrers/" + dgst, ""},
		{"/v2/docker.io/127.0.0.1:6098/library/alpine/manifests/3.20", ""},
		{"/v2/docker.io/library%2falpine/manifests/3.20", ""}, {"/v2/x/manifests/latest", "169.254.169.254"},
		{"/v2/a/manifests/manifests/manifests/x", ""}, {"/v2/docker.io/../../etc/manifests/x", ""},
		{"/v2/docker.io/a/blobs/uploads/", ""}, {"/v2/docker.io/A/manifests/" + strings.Repeat("t", 129), ""},
	} {
		f.Add(seed.path, seed.ns)
	}
	cfg := testConfig(f)
	f.Fuzz(func(t *testing.T, path, ns string) {
		// Parsed as net/http's server parses a request line's target.
		u, err := url.ParseRequestURI(path)
		if err != nil || !strings.HasPrefix(u.RequestURI(), "/") {
			return
		}
		if ns != "" {
			u.RawQuery = url.Values{"ns": {ns}}.Encode()
		}
		r := httptest.NewRequest(http.MethodGet, "http://proxy.test"+u.RequestURI(), nil)
		rt, apiErr := parseRoute(cfg, r)
		if apiErr != nil {
			if apiErr.status < 400 || apiErr.status >= 500 {
				t.Fatalf("%s: error status %d", path, apiErr.status)
			}
			return
		}
		switch rt.kind {
		case kindBase, kindCatalog, kindUpload:
			return
		}
		if got, ok := cfg.Upstream(rt.registry); !ok || got.Name != rt.registry {
			t.Fatalf("%s: routed to %q, which is not a configured upstream", path, rt.registry)
		}
		if strings.Contains(rt.repository, "..") || strings.ContainsAny(rt.repository, ":%\\ ") || strings.HasPrefix(rt.repository, "/") {
			t.Fatalf("%s: repository %q breaks the grammar", path, rt.repository)
		}
		again, repo, err := tags.ResolveName(cfg, rt.registry+"/"+rt.repository, "")
		if err != nil || again.Name != rt.registry || repo != rt.repository {
			t.Fatalf("%s: %s/%s does not resolve to itself: %s %s %v", path, rt.registry, rt.repository, again.Name, repo, err)
		}
		switch {
		case rt.kind == kindBlob || rt.kind == kindReferrers || (rt.kind == kindManifest && rt.isDigest()):
			if _, err := digest.Parse(rt.reference); err != nil {
				t.Fatalf("%s: accepted digest %q: %v", path, rt.reference, err)
			}
		case rt.kind == kindManifest:
			if !validTag(rt.reference) {
				t.Fatalf("%s: accepted tag %q", path, rt.reference)
			}
		}
	})
}
