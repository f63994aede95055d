package cache

import (
	"fmt"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestScheduledGCKeepsPinnedImages: with GCInterval, Lead runs GC: an
// unreferenced blob goes, a pinned manifest and its config and layer stay.
func TestScheduledGCKeepsPinnedImages(t *testing.T) {
	s, err := New(inmemory.New(), Options{SpoolDir: t.TempDir(), Registerer: prometheus.NewRegistry(),
		GCInterval: 10 * time.Millisecond, GCGrace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	config, layer := fillBlob(t, s, randomBytes(t, 100)), fillBlob(t, s, randomBytes(t, 1000))
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":100},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":1000}]}`, config, layer))
	m := Manifest{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
	if err := s.PutManifest(ctx, "docker.io", "library/app", m); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPin(ctx, Pin{Registry: "docker.io", Repository: "library/app", Tag: "v1", Digest: m.Digest, Policy: "manual"}); err != nil {
		t.Fatal(err)
	}
	unreferenced := fillBlob(t, s, randomBytes(t, 500))
	lead(t, s)
	waitFor(t, "GC to remove the unreferenced blob", func() bool {
		return testutil.ToFloat64(s.metrics.evictedBytes.WithLabelValues(reasonGC)) == 500
	})
	if holds(t, s, unreferenced) {
		t.Errorf("unreferenced blob still stored")
	}
	for _, d := range []digest.Digest{m.Digest, config, layer} {
		if !holds(t, s, d) {
			t.Errorf("pinned blob %s removed", d)
		}
	}
	waitFor(t, "a GC run counted", func() bool { return testutil.ToFloat64(s.metrics.gcRuns.WithLabelValues("ok")) >= 1 })
}
