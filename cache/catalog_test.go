package cache

import (
	"context"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestCatalogNamesArePullable: a registry with a port is stored and listed
// in the image-prefix form a client pulls it by, "host_5000/repo".
func TestCatalogNamesArePullable(t *testing.T) {
	s := newStores(t)["filesystem"]
	ctx := context.Background()
	body := []byte(`{"schemaVersion":2,"layers":[]}`)
	for _, reg := range []string{"reg.example:5000", "docker.io"} {
		m := Manifest{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
		if err := s.PutManifest(ctx, reg, "team/app", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPin(ctx, Pin{Registry: "reg.example:5000", Repository: "team/app", Tag: "v1", Digest: digest.FromBytes(body), Policy: "manual"}); err != nil {
		t.Fatal(err)
	}
	repos, err := s.Repositories(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"docker.io/team/app", "reg.example_5000/team/app"}; !slices.Equal(repos, want) {
		t.Fatalf("Repositories = %q, want %q", repos, want)
	}
	pins, err := s.Pins(ctx)
	if err != nil || len(pins) != 1 || pins[0].Image() != "reg.example:5000/team/app:v1" {
		t.Fatalf("Pins = %+v, %v", pins, err)
	}
}
