package tags

import (
	"testing"

	"github.com/pullbroker/pullbroker/config"
)

func TestPinRuleMatching(t *testing.T) {
	pr, err := loadPinRules(&config.Config{Pins: []config.PinRule{
		{Registry: "docker.io", Repository: "library/*", Tag: "1.*", Policy: config.PolicySticky},
		{Registry: "ghcr.io", Policy: config.PolicyTTL},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		registry, repo, tag string
		want                int
	}{
		{"docker.io", "library/nginx", "1.27", 0},
		{"docker.io", "library/nginx", "latest", -1},
		{"docker.io", "myorg/app", "1.0", -1},
		{"ghcr.io", "org/team/app", "v1", 1}, // an empty repository glob matches any depth
		{"quay.io", "org/app", "v1", -1},
	} {
		if _, i := pr.match(Image{Registry: tt.registry, Repository: tt.repo, Tag: tt.tag}); i != tt.want {
			t.Errorf("%s/%s:%s matched rule %d, want %d", tt.registry, tt.repo, tt.tag, i, tt.want)
		}
	}
}
