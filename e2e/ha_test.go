package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/service/s3"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// haCluster is the cluster section of three replicas on one bucket in these tests: a lease in the
// bucket, short enough that a killed leader is replaced within seconds, and journals shared often
// enough that the leader's view of reads lags well behind storage.evictMinIdle.
const haCluster = `  accountingInterval: 250ms
  leaderElection:
    backend: storage
    leaseDuration: 2s
    renewDeadline: 1500ms
    retryPeriod: 250ms`

// TestThreeReplicasEvictOnOneLeader (issue 10): three replicas on one bucket, filled past
// storage.maxSizeBytes with many images, two of them pinned. Exactly one replica (the leader)
// evicts, the bucket settles under the limit, and every pull served meanwhile has the right bytes.
// The leader is killed in the middle of a second burst of pulls that takes the bucket over the
// limit again: another replica takes the lease and evicts what the burst added. Evicted images are fetched again on
// demand; with the upstream stopped, the pinned images still pull through every live replica.
func TestThreeReplicasEvictOnOneLeader(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	const (
		repo      = "team/evict"
		layerSize = 1 << 20
		limit     = 5 * layerSize
	)
	push := func(i int) string {
		return testenv.PushTestImage(t, f.upstream.Addr, repo, fmt.Sprintf("v%d", i), 1, layerSize, &f.auth)
	}
	digests := map[int]string{}
	for i := range 10 {
		digests[i] = push(i)
	}
	cfg := pbConfig{S3: srv, MaxSizeBytes: limit, EvictMinIdle: time.Second, Cluster: haCluster}
	replicas := []*pullbroker{f.startPullbroker(cfg), f.startPullbroker(cfg), f.startPullbroker(cfg)}
	client := &http.Client{Timeout: time.Minute}
	pull := func(p *pullbroker, i int) {
		t.Helper()
		if err := pullImage(client, p, repo, fmt.Sprintf("v%d", i), digests[i]); err != nil {
			t.Fatalf("pull %s:v%d through %s: %v", repo, i, p.Addr, err)
		}
	}

	// Pinned through one replica, pulled through another: their blobs are in the bucket.
	for _, i := range []int{0, 1} {
		runCLI(t, f.secrets, append([]string{"pin", "set", upstreamName + "/" + repo + fmt.Sprintf(":v%d", i)}, f.adminFlags(replicas[2])...)...)
		pull(replicas[i], i)
	}
	for i := 2; i < 10; i++ {
		pull(replicas[i%3], i)
	}
	waitUntil(t, "the bucket settles under storage.maxSizeBytes", func() bool { return blobBytes(t, srv) <= limit })
	leader := onlyLeader(t, replicas)
	for _, p := range replicas {
		evicted := metricValue(t, p.metrics(t), "pullbroker_evictions_total", `reason="size"`)
		if (p == leader) != (evicted > 0) {
			t.Errorf("replica %s (leader: %t) evicted %v blobs; only the leader may evict, and it must have", p.Addr, p == leader, evicted)
		}
	}
	t.Logf("after 10 pulls of %d MiB images: bucket holds %.1f MiB of blobs, limit %.1f MiB", layerSize>>20, mib(blobBytes(t, srv)), mib(limit))

	// Every replica reports the cluster's size, not what it stored itself.
	waitUntil(t, "every replica reports the same cache size", func() bool {
		first := metricValue(t, replicas[0].metrics(t), "pullbroker_cache_size_bytes")
		for _, p := range replicas[1:] {
			if metricValue(t, p.metrics(t), "pullbroker_cache_size_bytes") != first {
				return false
			}
		}
		return first > 0
	})

	// Over the limit again, and the leader dies while it has eviction to do.
	var live []*pullbroker
	for _, p := range replicas {
		if p != leader {
			live = append(live, p)
		}
	}
	for i := 10; i < 16; i++ {
		digests[i] = push(i)
	}
	for i := 10; i < 12; i++ {
		pull(live[i%2], i)
	}
	leader.kill9()
	for i := 12; i < 16; i++ {
		pull(live[i%2], i)
	}
	waitUntil(t, "the bucket settles under storage.maxSizeBytes with the leader dead", func() bool { return blobBytes(t, srv) <= limit })
	successor := onlyLeader(t, live)
	if metricValue(t, successor.metrics(t), "pullbroker_evictions_total", `reason="size"`) == 0 {
		t.Errorf("the new leader %s evicted nothing, yet the bucket settled", successor.Addr)
	}

	// An evicted image is fetched again on demand; then, with the upstream gone, the pinned ones
	// are whole in the bucket.
	evicted := -1
	for i := 2; i < 16 && evicted < 0; i++ {
		if !imageWhole(t, client, live[0], repo, digests[i], srv) {
			evicted = i
		}
	}
	if evicted < 0 {
		t.Fatal("no image lost a blob to eviction")
	}
	for _, p := range live {
		pull(p, evicted)
	}
	f.upstream.Kill(t)
	for _, p := range live {
		pull(p, 0)
		pull(p, 1)
	}
}

// TestRollingRestartWhileClientsPull (issue 10): three replicas on one bucket are replaced one at
// a time, as a Deployment's rolling update does (a new Pod on the same bucket becomes ready, then
// the old one leaves the Service and gets SIGTERM), while 20 clients pull cached and uncached
// images through whichever replicas are in the Service. No pull fails, every byte is verified,
// and afterwards exactly one replica leads.
func TestRollingRestartWhileClientsPull(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	const repo = "team/rolling"
	digests := map[string]string{}
	for i := range 6 {
		tag := fmt.Sprintf("v%d", i)
		digests[tag] = testenv.PushTestImage(t, f.upstream.Addr, repo, tag, 2, 512<<10, &f.auth)
	}
	cfg := pbConfig{S3: srv, RecordCacheTTL: time.Second, Cluster: haCluster}
	service := &endpoints{}
	for range 3 {
		service.add(f.startPullbroker(cfg))
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 20}}

	ctx, stop := context.WithCancel(context.Background())
	var pulls, failures atomic.Int64
	var wg sync.WaitGroup
	for c := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; ctx.Err() == nil; i++ {
				tag := fmt.Sprintf("v%d", i%len(digests))
				p, done := service.pick(i)
				if err := pullImage(client, p, repo, tag, digests[tag]); err != nil {
					failures.Add(1)
					t.Errorf("client %d: pull %s:%s through %s: %v", c, repo, tag, p.Addr, err)
				}
				done()
				pulls.Add(1)
			}
		}()
	}
	for range 3 {
		old := service.oldest()
		service.add(f.startPullbroker(cfg))
		// A terminating Pod leaves the Service's endpoints before its SIGTERM lands (the chart's
		// preStop pause), so it gets no new pulls; a node's pull already under way goes on over
		// its open connection, and what is in flight at the SIGTERM is drained.
		service.remove(old)
		service.waitIdle(t, old)
		if err := old.Terminate(45 * time.Second); err != nil {
			t.Errorf("replica %s did not drain and exit cleanly: %v", old.Addr, err)
		}
	}
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	t.Logf("%d pulls during the rolling restart, %d failed", pulls.Load(), failures.Load())
	if pulls.Load() < 60 {
		t.Errorf("only %d pulls ran during the restart: the test did not exercise it", pulls.Load())
	}
	onlyLeader(t, service.all())
}

// endpoints is the test's Service: the replicas clients may pick, and the pulls each has under
// way.
type endpoints struct {
	mu       sync.Mutex
	replicas []*pullbroker
	pulling  map[*pullbroker]int
}

func (e *endpoints) add(p *pullbroker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.replicas = append(e.replicas, p)
}

func (e *endpoints) remove(p *pullbroker) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.replicas = slices.DeleteFunc(e.replicas, func(r *pullbroker) bool { return r == p })
}

func (e *endpoints) oldest() *pullbroker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.replicas[0]
}

// pick is the replica of pull i; done says the pull ended.
func (e *endpoints) pick(i int) (p *pullbroker, done func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pulling == nil {
		e.pulling = map[*pullbroker]int{}
	}
	p = e.replicas[i%len(e.replicas)]
	e.pulling[p]++
	return p, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.pulling[p]--
	}
}

// waitIdle waits until no pull is under way through p.
func (e *endpoints) waitIdle(t *testing.T, p *pullbroker) {
	waitUntil(t, "the pulls under way through "+p.Addr+" end", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.pulling[p] == 0
	})
}

func (e *endpoints) all() []*pullbroker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*pullbroker(nil), e.replicas...)
}

// onlyLeader waits until exactly one of replicas reports pullbroker_leader 1 and returns it.
func onlyLeader(t *testing.T, replicas []*pullbroker) *pullbroker {
	t.Helper()
	var leader *pullbroker
	waitUntil(t, "exactly one replica leads", func() bool {
		leader = nil
		n := 0
		for _, p := range replicas {
			if metricValue(t, p.metrics(t), "pullbroker_leader") == 1 {
				leader, n = p, n+1
			}
		}
		return n == 1
	})
	return leader
}

// blobBytes sums the sizes of the blobs in the bucket: what storage.maxSizeBytes bounds.
func blobBytes(t *testing.T, srv *testenv.S3Server) int64 {
	t.Helper()
	var total int64
	err := srv.Client(t).ListObjectsV2Pages(&s3.ListObjectsV2Input{Bucket: aws.String(srv.Bucket)},
		func(page *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range page.Contents {
				if k := aws.StringValue(o.Key); strings.Contains("/"+k, "/blobs/") && strings.HasSuffix(k, "/data") {
					total += aws.Int64Value(o.Size)
				}
			}
			return true
		})
	if err != nil {
		t.Fatalf("list bucket %s: %v", srv.Bucket, err)
	}
	return total
}

// imageWhole reports whether the bucket holds the manifest digest of repo and every blob it
// references.
func imageWhole(t *testing.T, client *http.Client, p *pullbroker, repo, digest string, srv *testenv.S3Server) bool {
	t.Helper()
	stored := map[string]bool{}
	for _, k := range srv.Keys(t) {
		if strings.HasSuffix(k, "/data") {
			parts := strings.Split(k, "/")
			stored["sha256:"+parts[len(parts)-2]] = true
		}
	}
	if !stored[digest] {
		return false
	}
	// Stored, so answered from the bucket: asking does not change what is cached.
	resp, raw := get(t, client, p.url("/v2/"+upstreamName+"/"+repo+"/manifests/"+digest))
	if resp.StatusCode != http.StatusOK || digestOf(raw) != digest {
		t.Fatalf("manifest %s, stored in the bucket, through %s: %s, digest %s", digest, p.Addr, resp.Status, digestOf(raw))
	}
	for _, d := range parseManifest(t, raw).blobs() {
		if !stored[d.Digest] {
			return false
		}
	}
	return true
}
