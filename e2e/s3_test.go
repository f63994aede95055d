package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestReplicasShareS3Storage (issue 10) runs two pullbrokers, A and B, on one bucket of a real S3
// server (versitygw), each reaching the upstream through its own counting proxy.
//
// A pin set and refreshed through B's admin API is answered by A on its next request: A's tag TTL
// is a millisecond and the upstream has moved the tag, so only the pin can make A answer the old
// digest. Then, with the upstream killed, B serves what A pulled (an index, its images and layers,
// and a Range of a layer as 206 with the right bytes) with zero upstream requests.
func TestReplicasShareS3Storage(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	toA, toB := newUpstreamProxy(t, f.upstream.Addr), newUpstreamProxy(t, f.upstream.Addr)
	upA := f.upstreamConfig(toA.endpoint())
	upA.TagTTL = time.Millisecond
	a := f.startPullbroker(pbConfig{S3: srv, Upstreams: []upstreamConfig{upA}})
	b := f.startPullbroker(pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(toB.endpoint())}})
	client := &http.Client{Timeout: 30 * time.Second}
	image := upstreamName + "/" + appRepo + ":" + appTag
	headTag := func(p *pullbroker) string { return appTagDigest(t, client, p) }

	old := f.appDigest
	skopeoPull(t, a.ref(appRepo+":"+appTag), old)
	skopeoPull(t, a.ref(appRepo+":"+multiTag), f.multi.Digest)
	if keys := srv.Keys(t); len(keys) == 0 {
		t.Fatal("pulls through A stored nothing in the bucket")
	}

	// A pin made through B, answered by A.
	admin := f.adminFlags
	runCLI(t, f.secrets, append([]string{"pin", "set", image}, admin(b)...)...)
	moved := testenv.PushTestImage(t, f.upstream.Addr, appRepo, appTag, 1, 256<<10, &f.auth)
	if got := headTag(a); got != old {
		t.Fatalf("A answers %s with %s after B pinned %s (the upstream moved it to %s)", image, got, old, moved)
	}
	out := runCLI(t, f.secrets, append([]string{"pin", "refresh", image}, admin(b)...)...)
	if !strings.Contains(out, old+" -> "+moved) {
		t.Fatalf("pin refresh through B printed %q, want %s -> %s", out, old, moved)
	}
	beforeA := toA.total()
	if got := headTag(a); got != moved {
		t.Fatalf("A answers %s with %s right after B refreshed the pin to %s", image, got, moved)
	}
	if n := toA.total() - beforeA; n != 0 {
		t.Errorf("A answered the pinned tag with %d upstream requests, want 0: %v", n, toA.counts())
	}
	// What a pinned tag costs in object-storage requests with storage.recordCacheTTL 0, the
	// default: pins and tag records are read from the bucket on every request, which is why a
	// change through B is seen at once (TestPinnedTagsOnS3WithRecordCache has the other side).
	ops := srv.Operations(t)
	const heads = 100
	for range heads {
		if got := headTag(a); got != moved {
			t.Fatalf("A answers the pinned %s with %s, want %s", image, got, moved)
		}
	}
	t.Logf("%d HEADs of a pinned tag through A: S3 operations %v", heads, opsSince(ops, srv.Operations(t)))
	skopeoPull(t, a.ref(appRepo+":"+appTag), moved)

	// The upstream is gone: B serves what A cached, asking nobody.
	f.upstream.Kill(t)
	beforeB := toB.total()
	skopeoPull(t, b.ref(appRepo+":"+appTag), moved)
	skopeoPull(t, b.ref(appRepo+":"+multiTag), f.multi.Digest)
	platform := f.multi.Platforms[testenv.MultiArchPlatforms[0]]
	_, raw := get(t, client, b.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+platform))
	layer := parseManifest(t, raw).Layers[0]
	blobURL := b.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)
	resp, whole := get(t, client, blobURL)
	if resp.StatusCode != http.StatusOK || digestOf(whole) != layer.Digest {
		t.Fatalf("GET %s through B: %s, digest %s", layer.Digest, resp.Status, digestOf(whole))
	}
	from, to := int64(len(whole)/3), int64(len(whole)/3+100_000)
	req, err := http.NewRequest(http.MethodGet, blobURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var part bytes.Buffer
	_, err = part.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part.Bytes(), whole[from:to+1]) {
		t.Fatalf("Range bytes=%d-%d of %s through B: %s, %d bytes (right bytes: %v)", from, to, layer.Digest,
			resp.Status, part.Len(), bytes.Equal(part.Bytes(), whole[from:to+1]))
	}
	if n := toB.total() - beforeB; n != 0 {
		t.Errorf("B served what A pulled with %d upstream requests, want 0: %v", n, toB.counts())
	}
}

// opsSince is the S3 operations in now that were not yet in before.
// TestPinnedTagsOnS3WithRecordCache: with storage.recordCacheTTL, 1,000 HEADs of a pinned tag
// cost no object-storage request after the first, and a pin moved through another replica is
// answered within the TTL.
func TestPinnedTagsOnS3WithRecordCache(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	const ttl = 2 * time.Second
	a := f.startPullbroker(pbConfig{S3: srv, RecordCacheTTL: ttl})
	b := f.startPullbroker(pbConfig{S3: srv, RecordCacheTTL: ttl})
	client := &http.Client{Timeout: 30 * time.Second}
	image := upstreamName + "/" + appRepo + ":" + appTag
	headTag := func(p *pullbroker) string { return appTagDigest(t, client, p) }
	admin := f.adminFlags
	runCLI(t, f.secrets, append([]string{"pin", "set", image}, admin(a)...)...)
	headTag(a)

	// The cache's own objects: the replicas' lease and journals (cluster/) are written at a
	// steady rate whatever the traffic.
	cached := []string{"repos/", "blobs/"}
	ops := srv.Operations(t, cached...)
	const heads = 1000
	for range heads {
		if got := headTag(a); got != f.appDigest {
			t.Fatalf("A answers the pinned %s with %s, want %s", image, got, f.appDigest)
		}
	}
	spent := opsSince(ops, srv.Operations(t, cached...))
	// A listing is the leader's walk of storage when it takes the lease (once, whatever the
	// traffic); answering a HEAD never lists.
	delete(spent, "ListObjectsV2")
	if len(spent) != 0 {
		t.Errorf("%d HEADs of a pinned tag cost S3 operations on the cache's objects %v, want none", heads, spent)
	}

	moved := testenv.PushTestImage(t, f.upstream.Addr, appRepo, appTag, 1, 256<<10, &f.auth)
	runCLI(t, f.secrets, append([]string{"pin", "refresh", image}, admin(b)...)...)
	refreshed := time.Now()
	for headTag(a) != moved {
		if time.Since(refreshed) > ttl+time.Second {
			t.Fatalf("A still answers the old pin %s after the TTL (%s) plus a second", f.appDigest, ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("A answered the pin B moved %s after the refresh (recordCacheTTL %s)", time.Since(refreshed).Round(time.Millisecond), ttl)
}

// appTagDigest is the digest p answers a HEAD of appTag with.
func appTagDigest(t *testing.T, client *http.Client, p *pullbroker) string {
	t.Helper()
	resp := headManifest(t, client, p.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+appTag))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s:%s through %s: %s", appRepo, appTag, p.Addr, resp.Status)
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// adminFlags point the pin CLI at p's admin API.
func (f *fixture) adminFlags(p *pullbroker) []string {
	return []string{"--admin", "http://" + p.Admin, "--token-file", f.adminTokenFile}
}

func opsSince(before, now map[string]int) map[string]int {
	out := map[string]int{}
	for op, n := range now {
		if d := n - before[op]; d != 0 {
			out[op] = d
		}
	}
	return out
}

// TestS3Redirect: with storage.redirect, a GET of a cached blob is a 307 to a signed URL of the
// bucket that serves the right bytes (and Ranges), skopeo pulls through it, and HEADs are still
// answered by pullbroker. A replica on the same bucket without the setting serves the bytes
// itself: redirects are off by default.
func TestS3Redirect(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	redirecting := f.startPullbroker(pbConfig{S3: srv, Redirect: true})
	direct := f.startPullbroker(pbConfig{S3: srv})
	skopeoPull(t, redirecting.ref(appRepo+":"+appTag), f.appDigest)

	noFollow := &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	_, raw := get(t, noFollow, redirecting.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+appTag))
	layer := parseManifest(t, raw).Layers[0]
	blobPath := "/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest
	resp, _ := get(t, noFollow, redirecting.url(blobPath))
	location := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(location, srv.Endpoint+"/"+srv.Bucket+"/") {
		t.Fatalf("GET of a cached blob with storage.redirect: %s, Location %q, want 307 to %s", resp.Status, location, srv.Endpoint)
	}
	if !strings.Contains(location, "X-Amz-Signature=") || strings.Contains(location, srv.SecretKey) {
		t.Fatalf("Location %q is not a signed URL (or holds the secret key)", location)
	}
	resp, whole := get(t, noFollow, location)
	if resp.StatusCode != http.StatusOK || digestOf(whole) != layer.Digest {
		t.Fatalf("GET of the signed URL: %s, digest %s, want %s", resp.Status, digestOf(whole), layer.Digest)
	}
	req, err := http.NewRequest(http.MethodGet, location, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err = noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var part bytes.Buffer
	_, err = part.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part.Bytes(), whole[1000:2000]) {
		t.Fatalf("Range of the signed URL: %s, %d bytes, %v", resp.Status, part.Len(), err)
	}
	if resp := headManifest(t, noFollow, redirecting.url(blobPath)); resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD of a cached blob with storage.redirect: %s, want 200", resp.Status)
	}
	skopeoPull(t, redirecting.ref(appRepo+":"+appTag), f.appDigest)

	resp, body := get(t, noFollow, direct.url(blobPath))
	if resp.StatusCode != http.StatusOK || digestOf(body) != layer.Digest {
		t.Fatalf("GET of a cached blob without storage.redirect: %s, digest %s", resp.Status, digestOf(body))
	}
}

// TestKillMidFillOnS3: replica A is killed with SIGKILL while it fills a layer into the shared
// bucket. Nothing of the layer reaches the bucket; replica B then fills it whole (one object under
// the digest, no uploads left) and serves the right bytes.
func TestKillMidFillOnS3(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[0]
	faults := newFaultProxy(t, f.upstream.Addr, layer.Digest, faultHold)
	t.Cleanup(faults.releaseHeld)
	a := f.startPullbroker(pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())}})
	b := f.startPullbroker(pbConfig{S3: srv})
	linkManifest(t, a)
	blobPath := "/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest
	layerKeys := func() (blob, uploads []string) { return blobAndUploadKeys(t, srv, layer.Digest) }

	resp, err := http.Get(a.url(blobPath))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(resp.Body, holdAfter/2))
	if err != nil || resp.StatusCode != http.StatusOK || len(got) != holdAfter/2 {
		t.Fatalf("the first half of the held layer: %s, %d bytes, %v", resp.Status, len(got), err)
	}
	a.kill9()
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("the client's response ended cleanly when A was killed mid-fill")
	}
	if blob, _ := layerKeys(); len(blob) != 0 {
		t.Fatalf("A killed mid-fill left the blob in the bucket: %v", blob)
	}
	// B's journal and probes pass through uploads/ for a moment; what A left would stay.
	waitUntil(t, "no upload is left after A's crash", func() bool { _, uploads := layerKeys(); return len(uploads) == 0 })

	linkManifest(t, b)
	status, digest, n, err := pullBlob(http.DefaultClient, b.url(blobPath))
	if status != http.StatusOK || digest != layer.Digest || n != layer.Size || err != nil {
		t.Fatalf("B after A's crash: %d, %d bytes %s (%v); want 200, %d bytes %s", status, n, digest, err, layer.Size, layer.Digest)
	}
	// The client has its last byte once the layer is verified; the commit follows.
	waitUntil(t, "B commits the layer", func() bool { blob, _ := layerKeys(); return len(blob) == 1 })
	// Journals and probes pass through uploads/ for a moment, so an upload seen once may be one of
	// theirs; one that stays is what a commit would leave.
	waitUntil(t, "no upload is left", func() bool { _, uploads := layerKeys(); return len(uploads) == 0 })
}

// blobAndUploadKeys lists the bucket's objects of the blob digest and those under uploads/.
func blobAndUploadKeys(t *testing.T, srv *testenv.S3Server, digest string) (blob, uploads []string) {
	t.Helper()
	hex := strings.TrimPrefix(digest, "sha256:")
	for _, k := range srv.Keys(t) {
		switch {
		case strings.HasPrefix(k, "blobs/") && strings.Contains(k, hex):
			blob = append(blob, k)
		case strings.HasPrefix(k, "uploads/"):
			uploads = append(uploads, k)
		}
	}
	return blob, uploads
}
