package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

// cachedRequest is one request of TestConcurrentClientsOverCachedContent
// and its right answer.
type cachedRequest struct {
	kind   string
	method string
	path   string
	digest digest.Digest // Docker-Content-Digest, for manifests
	body   []byte        // for GETs
}

// TestConcurrentClientsOverCachedContent is the short form of bench's
// load measurement (6), for the race detector: 100 keep-alive clients for
// 3 s over manifests by pinned and fresh tag and by digest, and blobs, all
// already cached. Every answer must be right and nothing may reach the
// upstream.
func TestConcurrentClientsOverCachedContent(t *testing.T) {
	const (
		clients     = 100
		duration    = 3 * time.Second
		maxRequests = 500_000
	)
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) {
		c.Pins = []config.PinRule{{Registry: upstreamName, Repository: "team/app", Tag: "pinned-*", Policy: config.PolicySticky}}
	})
	var reqs []cachedRequest
	for i := 1; i <= 2; i++ {
		img := blobImage(t, randomBytes(t, 4<<10), randomBytes(t, 64<<10))
		pinned, fresh := fmt.Sprintf("pinned-%d", i), fmt.Sprintf("fresh-%d", i)
		e.up.Push("team/app", pinned, img)
		e.up.Push("team/app", fresh, img)
		raw, dgst, _ := manifestOf(t, img)
		base := "/v2/" + upstreamName + "/team/app/"
		for _, tag := range []string{pinned, fresh} {
			reqs = append(reqs,
				cachedRequest{kind: "GET manifest " + tag, method: http.MethodGet, path: base + "manifests/" + tag, digest: dgst, body: raw},
				cachedRequest{kind: "HEAD manifest " + tag, method: http.MethodHead, path: base + "manifests/" + tag, digest: dgst})
		}
		reqs = append(reqs, cachedRequest{kind: "GET manifest by digest", method: http.MethodGet, path: base + "manifests/" + dgst.String(), digest: dgst, body: raw})
		config, err := img.RawConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		blobs := [][]byte{config}
		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			blobs = append(blobs, b)
		}
		for _, b := range blobs {
			reqs = append(reqs, cachedRequest{kind: "GET blob", method: http.MethodGet, path: base + "blobs/" + digest.FromBytes(b).String(), body: b})
		}
	}

	// One shared transport, an idle connection kept for every client.
	transport := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	check := func(ctx context.Context, q cachedRequest) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, q.method, e.srv.URL+q.path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: status %d", q.method, q.path, resp.StatusCode)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); q.digest != "" && got != q.digest.String() {
			return fmt.Errorf("%s %s: Docker-Content-Digest %s, want %s", q.method, q.path, got, q.digest)
		}
		if q.method == http.MethodHead {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("%s %s: %w", q.method, q.path, err)
		}
		if !bytes.Equal(body, q.body) {
			return fmt.Errorf("%s %s: %d bytes (%s), want %d bytes (%s)", q.method, q.path, len(body), digest.FromBytes(body), len(q.body), digest.FromBytes(q.body))
		}
		return nil
	}

	// Warm-up: GETs fill the cache and resolve (and pin) the tags.
	for _, q := range reqs {
		if err := check(t.Context(), q); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
	e.up.ResetCounts()

	var (
		sent, failed atomic.Int64
		mu           sync.Mutex
		firstErrs    []error
		perKind      = map[string]int{}
		wg           sync.WaitGroup
	)
	deadline := time.Now().Add(duration)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := map[string]int{}
			for n := w; time.Now().Before(deadline) && sent.Add(1) <= maxRequests; n++ {
				q := reqs[n%len(reqs)]
				if err := check(t.Context(), q); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(firstErrs) < 5 {
						firstErrs = append(firstErrs, err)
					}
					mu.Unlock()
					continue
				}
				done[q.kind]++
			}
			mu.Lock()
			for k, v := range done {
				perKind[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()

	total := min(sent.Load(), maxRequests)
	t.Logf("%d requests from %d clients in %s: %v", total, clients, duration, perKind)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; first: %v", n, total, firstErrs)
	}
	for _, q := range reqs {
		if perKind[q.kind] == 0 {
			t.Errorf("no successful %s request", q.kind)
		}
	}
	if n := e.up.Total(); n != 0 {
		got := e.up.Requests()
		t.Errorf("%d upstream requests for cached content after the warm-up, want 0; first: %v", n, got[:min(len(got), 10)])
	}
}
