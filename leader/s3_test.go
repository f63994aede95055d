package leader_test

import (
	"slices"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// Two replicas on one bucket of a real S3 server (versitygw on loopback),
// through distribution's S3 driver as the cache uses it: one leads, and
// stopping it hands over at once.
func TestStorageOnS3Handover(t *testing.T) {
	srv := testenv.StartS3(t)
	params := srv.Parameters()
	params["rootdirectory"] = "/pullbroker"
	const lease = 5 * time.Second
	cfg := storageCluster(lease, 3*time.Second, 300*time.Millisecond)
	// A driver each, as each replica opens its own. Both are made before
	// either runs, and the bucket is listed once both stopped: every new
	// aws-sdk-go session rewrites http.DefaultClient's transport when
	// AWS_CA_BUNDLE is set.
	var drivers []storagedriver.StorageDriver
	for range 2 {
		driver, err := factory.Create(t.Context(), "s3", params)
		if err != nil {
			t.Fatal(err)
		}
		drivers = append(drivers, driver)
	}
	ls := &leaders{}
	rs := []*replica{startReplica(t, ls, "a", cfg, drivers[0]), startReplica(t, ls, "b", cfg, drivers[1])}
	theLeader(t, 10*time.Second, rs...)
	first := exactlyOneLeads(t, time.Second, rs...)

	stopped := time.Now()
	first.stop()
	second := theLeader(t, lease, others(rs, first)...)
	t.Logf("%s took over %s after %s stopped", second.name, time.Since(stopped).Round(time.Millisecond), first.name)
	if took := time.Since(stopped); took >= lease {
		t.Fatalf("took %s: the lease was not released", took)
	}
	noOverlap(t, ls)

	second.stop()
	if keys := srv.Keys(t); !slices.Contains(keys, "pullbroker/cluster/leader") {
		t.Fatalf("bucket keys %v, want the lease at pullbroker/cluster/leader", keys)
	}
}
