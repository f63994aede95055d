package podimages

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upstreams = append(cfg.Upstreams, config.Upstream{Name: "registry.example:5000", Endpoint: "https://registry.example:5000"})
	return cfg
}

func TestProxyImageReadsBothForms(t *testing.T) {
	cfg := testConfig(t)
	const d = "sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff"
	tests := []struct {
		ref  string
		want string // tags.Image.String(); "" when not served
	}{
		// The plain form, as a node with a mirror pulls it.
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27"},
		{"index.docker.io/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"ghcr.io/org/app:v1@" + d, "ghcr.io/org/app:v1@" + d},
		{"registry.example:5000/team/app@" + d, "registry.example:5000/team/app@" + d},
		// The webhook's image-prefix form, whatever the proxy's host.
		{"pullbroker.example:5000/docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"localhost:30500/docker.io/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"pullbroker.example/ghcr.io/org/app@" + d, "ghcr.io/org/app@" + d},
		{"pullbroker.example/registry.example_5000/team/app:v2", "registry.example:5000/team/app:v2"},
		// Not served: a registry that is no upstream, in either form.
		{"example.invalid/org/app:v1", ""},
		{"pullbroker.example/example.invalid/org/app:v1", ""},
		{"pullbroker.example/org/app:v1", ""},
		{"Not A Reference", ""},
	}
	for _, tc := range tests {
		img, ok := proxyImage(cfg, tc.ref)
		got := ""
		if ok {
			got = img.String()
		}
		if got != tc.want {
			t.Errorf("proxyImage(%q) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}

func TestStatusDigestOnlyForTheSameRepository(t *testing.T) {
	cfg := testConfig(t)
	const d = digest.Digest("sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff")
	nginx, _ := proxyImage(cfg, "pullbroker.example/docker.io/library/nginx:1.27")
	tests := []struct {
		imageID string
		want    digest.Digest
	}{
		{"docker.io/library/nginx@" + d.String(), d},                    // containerd, CRI-O
		{"docker-pullable://nginx@" + d.String(), d},                    // dockershim
		{"pullbroker.example/docker.io/library/nginx@" + d.String(), d}, // pulled through the prefix
		{"sha256:" + d.Encoded(), ""},                                   // an image ID: the config, no manifest
		{"docker.io/library/redis@" + d.String(), ""},                   // another repository
		{"ghcr.io/library/nginx@" + d.String(), ""},                     // another registry
		{"", ""},                             // not pulled yet
		{"docker.io/library/nginx:1.27", ""}, // no digest
	}
	for _, tc := range tests {
		if got := statusDigest(cfg, nginx, tc.imageID); got != tc.want {
			t.Errorf("statusDigest(%q) = %q, want %q", tc.imageID, got, tc.want)
		}
	}
}
