package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pullbroker/pullbroker/config"
)

func testConfig(t testing.TB) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upstreams = append(cfg.Upstreams, config.Upstream{Name: "127.0.0.1:5001", Endpoint: "http://127.0.0.1:5001", TagTTL: config.DefaultTagTTL})
	return cfg
}

func TestParseRoute(t *testing.T) {
	cfg := testConfig(t)
	const dgst = "sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff"
	tests := []struct {
		url                       string
		kind, registry, repo, ref string
		mirror                    bool
		wantStatus                int
		wantCode                  string
	}{
		{url: "/v2/", kind: kindBase},
		{url: "/v2/_catalog", kind: kindCatalog},
		{url: "/v2/docker.io/library/nginx/manifests/1.27", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "1.27"},
		{url: "/v2/docker.io/nginx/manifests/1.27", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "1.27"},
		{url: "/v2/index.docker.io/nginx/manifests/latest", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "latest"},
		{url: "/v2/nginx/manifests/latest", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "latest"},
		{url: "/v2/library/nginx/manifests/1.27?ns=docker.io", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "1.27", mirror: true},
		{url: "/v2/nginx/manifests/1.27?ns=docker.io", kind: kindManifest, registry: "docker.io", repo: "library/nginx", ref: "1.27", mirror: true},
		{url: "/v2/ghcr.io/org/team/app/blobs/" + dgst, kind: kindBlob, registry: "ghcr.io", repo: "org/team/app", ref: dgst},
		{url: "/v2/127.0.0.1:5001/a/manifests/manifests/x", kind: kindManifest, registry: "127.0.0.1:5001", repo: "a/manifests", ref: "x"},
		{url: "/v2/127.0.0.1_5001/a/b/manifests/v1", kind: kindManifest, registry: "127.0.0.1:5001", repo: "a/b", ref: "v1"},
		{url: "/v2/quay.io/org/app/tags/list?n=10", kind: kindTags, registry: "quay.io", repo: "org/app"},
		{url: "/v2/quay.io/org/app/referrers/" + dgst, kind: kindReferrers, registry: "quay.io", repo: "org/app", ref: dgst},
		{url: "/v2/quay.io/org/app/blobs/uploads/", kind: kindUpload},
		{url: "/v2/evil.example.com/x/manifests/latest", wantStatus: 404, wantCode: "NAME_UNKNOWN"},
		{url: "/v2/x/manifests/latest?ns=169.254.169.254", wantStatus: 404, wantCode: "NAME_UNKNOWN"},
		{url: "/v2/docker.io/Library/Nginx/manifests/latest", wantStatus: 400, wantCode: "NAME_INVALID"},
		// A host with a port under a configured prefix is not a repository path.
		{url: "/v2/docker.io/127.0.0.1:6098/library/alpine/manifests/3.20", wantStatus: 400, wantCode: "NAME_INVALID"},
		{url: "/v2/docker.io/[::1]:6098/alpine/manifests/3.20", wantStatus: 400, wantCode: "NAME_INVALID"},
		// An encoded slash is not decoded into a path separator.
		{url: "/v2/docker.io/library%2falpine/manifests/3.20", wantStatus: 400, wantCode: "NAME_INVALID"},
		{url: "/v2/docker.io/library%2Falpine/blobs/" + dgst, wantStatus: 400, wantCode: "NAME_INVALID"},
		{url: "/v2/docker.io/library/nginx/manifests/bad%20tag", wantStatus: 400, wantCode: "TAG_INVALID"},
		{url: "/v2/docker.io/library/nginx/blobs/sha256:abc", wantStatus: 400, wantCode: "DIGEST_INVALID"},
		{url: "/v2/docker.io/library/nginx/manifests/sha256:zz", wantStatus: 400, wantCode: "DIGEST_INVALID"},
		{url: "/v2/docker.io/library/nginx/whatever", wantStatus: 404, wantCode: "UNSUPPORTED"},
		{url: "/v2/docker.io/library/nginx/manifests/", wantStatus: 404, wantCode: "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.url, nil)
			rt, apiErr := parseRoute(cfg, r)
			if tt.wantStatus != 0 {
				if apiErr == nil {
					t.Fatalf("parsed as %+v, want error %d %s", rt, tt.wantStatus, tt.wantCode)
				}
				if apiErr.status != tt.wantStatus || apiErr.err.Code.String() != tt.wantCode {
					t.Fatalf("error = %d %s (%s), want %d %s", apiErr.status, apiErr.err.Code, apiErr.err.Message, tt.wantStatus, tt.wantCode)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("unexpected error %d %s", apiErr.status, apiErr.err.Message)
			}
			if rt.kind != tt.kind || rt.registry != tt.registry || rt.repository != tt.repo || rt.reference != tt.ref || rt.mirrorForm != tt.mirror {
				t.Fatalf("route = %+v", rt)
			}
		})
	}
}

func TestRewriteNextLinkStaysOnProxy(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/v2/library/nginx/tags/list?ns=docker.io&n=2", nil)
	got, ok := rewriteNextLink(`<https://registry-1.docker.io/v2/library/nginx/tags/list?last=b&n=2&evil=1>; rel="next"`, r)
	want := `</v2/library/nginx/tags/list?last=b&n=2&ns=docker.io>; rel="next"`
	if !ok || got != want {
		t.Fatalf("rewriteNextLink = %q, want %q", got, want)
	}
}
