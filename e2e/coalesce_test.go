package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestConcurrentColdPullsOneUpstreamFetch (issue 2), through the real binary: 50 clients ask for
// the same uncached blob at once while the upstream sends it slowly; every one gets all of it with
// the right digest, and the upstream sees exactly one GET for it. A Range request afterwards is
// answered 206 from the cache.
func TestConcurrentColdPullsOneUpstreamFetch(t *testing.T) {
	const clients = 50
	f := newFixture(t)
	counting := newUpstreamProxy(t, f.upstream.Addr)
	counting.bytesPerSecond.Store(8 << 20) // a quarter of a second for the 2 MiB layer
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{f.upstreamConfig(counting.endpoint())}})
	layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[0]
	blobURL := pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)

	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxConnsPerHost: clients, MaxIdleConnsPerHost: clients}}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := make(chan struct{})
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := client.Get(blobURL)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			if d := fmt.Sprintf("sha256:%x", h.Sum(nil)); err != nil || resp.StatusCode != http.StatusOK || d != layer.Digest || n != layer.Size {
				errs <- fmt.Errorf("%s: %d bytes %s (%v), want %d bytes %s", resp.Status, n, d, err, layer.Size, layer.Digest)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	counts := counting.counts()
	if counts["GET blob"] != 1 {
		t.Errorf("%d concurrent cold pulls of one blob made %d upstream blob GETs, want 1: %v", clients, counts["GET blob"], counts)
	}
	t.Logf("%d concurrent cold pulls of a %d-byte blob; upstream requests: %v", clients, layer.Size, counts)

	req, err := http.NewRequest(http.MethodGet, blobURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=10-19")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("bytes 10-19/%d", layer.Size); resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want || len(body) != 10 {
		t.Errorf("Range bytes=10-19: %s, Content-Range %q, %d bytes; want 206 %q, 10 bytes", resp.Status, resp.Header.Get("Content-Range"), len(body), want)
	}
	if n := counting.counts()["GET blob"]; n != 1 {
		t.Errorf("the Range request went upstream (%d blob GETs)", n)
	}
}
