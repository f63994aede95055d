package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestAlwaysPullPinned (issue 4) simulates `imagePullPolicy: Always` through the real binary: after
// `pullbroker pin set`, 1,000 manifest HEADs by tag (and GETs, and a skopeo pull of the cached
// image) cost zero upstream requests, counted
// by a reverse proxy between pullbroker and docker-registry. The tag TTL is a millisecond, so
// without the pin every one of them would revalidate upstream (checked first). A new image pushed
// to the same tag upstream does not change what is served until `pullbroker pin refresh`, which
// reports old -> new; then the new digest is served. The unpinned control also shows that TTL
// revalidation of an unchanged tag is a HEAD upstream, never a GET; a restart on the same storage
// keeps the pin.
func TestAlwaysPullPinned(t *testing.T) {
	const pinnedHeads = 1000
	f := newFixture(t)
	counting := newUpstreamProxy(t, f.upstream.Addr)
	u := f.upstreamConfig(counting.endpoint())
	u.TagTTL = time.Millisecond
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{u}})
	image := upstreamName + "/" + appRepo + ":" + appTag
	tagURL := pb.url("/v2/" + upstreamName + "/" + appRepo + "/manifests/" + appTag)
	client := &http.Client{Timeout: 30 * time.Second}
	old := f.upstreamDigest(appRepo + ":" + appTag)

	headAll := func(n int, want string) {
		t.Helper()
		for i := range n {
			resp := headManifest(t, client, tagURL)
			if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || got != want {
				t.Fatalf("HEAD %d of %s: %s, digest %s, want 200 %s", i+1, image, resp.Status, got, want)
			}
		}
	}

	// Control: unpinned, with a 1 ms TTL, HEADs do reach the upstream (so the count below means
	// something). The pull first caches the blobs, which a pin does not fetch.
	// Revalidating an unchanged tag is a HEAD upstream, never a GET.
	skopeoPull(t, pb.ref(appRepo+":"+appTag), old)
	before, counts := counting.total(), counting.counts()
	headAll(10, old)
	time.Sleep(5 * time.Millisecond)
	headAll(10, old)
	after := counting.counts()
	heads, gets := after["HEAD manifest"]-counts["HEAD manifest"], after["GET manifest"]-counts["GET manifest"]
	if counting.total() == before || heads == 0 {
		t.Fatal("20 unpinned HEADs with a 1 ms tag TTL made no upstream HEAD; the counting proxy sees nothing")
	}
	if gets != 0 {
		t.Errorf("revalidating an unchanged tag made %d manifest GETs upstream, want 0 (HEAD only)", gets)
	}
	t.Logf("control: 20 unpinned HEADs with a 1 ms TTL made %d upstream manifest HEADs and %d GETs", heads, gets)

	out := runCLI(t, f.secrets, "pin", "set", image, "--admin", "http://"+pb.Admin, "--token-file", f.adminTokenFile)
	if !strings.Contains(out, old) {
		t.Fatalf("pin set printed %q, want the upstream digest %s", out, old)
	}
	before = counting.total()
	start := time.Now()
	headAll(pinnedHeads, old)
	elapsed := time.Since(start)
	for range 10 {
		resp, body := get(t, client, tagURL)
		if resp.StatusCode != http.StatusOK || digestOf(body) != old {
			t.Fatalf("GET %s while pinned: %s, body digest %s, want %s", image, resp.Status, digestOf(body), old)
		}
	}
	skopeoPull(t, pb.ref(appRepo+":"+appTag), old)
	if n := counting.total() - before; n != 0 {
		t.Fatalf("%d HEADs, 10 GETs and a skopeo pull of a pinned tag made %d upstream requests, want 0: %v", pinnedHeads, n, counting.counts())
	}
	t.Logf("%d HEADs + 10 GETs + a skopeo pull of a pinned tag: 0 upstream requests, %v per HEAD", pinnedHeads, (elapsed / pinnedHeads).Round(time.Microsecond))

	// The upstream moves the tag.
	moved := testenv.PushTestImage(t, f.upstream.Addr, appRepo, appTag, 1, 256<<10, &f.auth)
	if moved == old || f.upstreamDigest(appRepo+":"+appTag) != moved {
		t.Fatalf("pushing a new image to %s did not move the tag upstream", appTag)
	}
	before = counting.total()
	headAll(100, old)
	skopeoPull(t, pb.ref(appRepo+":"+appTag), old)
	if n := counting.total() - before; n != 0 {
		t.Errorf("pulls of the pinned tag after the upstream moved it made %d upstream requests: %v", n, counting.counts())
	}

	out = runCLI(t, f.secrets, "pin", "refresh", image, "--admin", "http://"+pb.Admin, "--token-file", f.adminTokenFile)
	t.Logf("pin refresh: %s", out)
	if !strings.Contains(out, old+" -> "+moved) {
		t.Fatalf("pin refresh printed %q, want it to report %s -> %s", out, old, moved)
	}
	headAll(10, moved)
	skopeoPull(t, pb.ref(appRepo+":"+appTag), moved)
	list := runCLI(t, f.secrets, "pin", "list", "--admin", "http://"+pb.Admin, "--token-file", f.adminTokenFile)
	if !strings.Contains(list, moved) || strings.Contains(list, old) {
		t.Errorf("pin list after refresh:\n%s\nwant %s and not %s", list, moved, old)
	}

	// Pins live in the storage: a restarted proxy answers the pinned tag with no upstream request.
	if err := pb.Terminate(time.Minute); err != nil {
		t.Fatalf("stopping pullbroker: %v", err)
	}
	pb = f.startPullbroker(pbConfig{StorageDir: pb.StorageDir, Upstreams: []upstreamConfig{u}})
	tagURL = pb.url("/v2/" + upstreamName + "/" + appRepo + "/manifests/" + appTag)
	before = counting.total()
	headAll(100, moved)
	if n := counting.total() - before; n != 0 {
		t.Errorf("after a restart, 100 HEADs of the pinned tag made %d upstream requests, want 0", n)
	}
}
