package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

// blobPath is the prefix-form path of a blob in repo.
func blobPath(repo string, d digest.Digest) string {
	return "/v2/" + upstreamName + "/" + repo + "/blobs/" + d.String()
}

// pushLayers pushes an image whose layers hold exactly layers as repo:v1,
// and returns it with the digests of its layers.
func (e *env) pushLayers(repo string, layers ...[]byte) (v1.Image, []digest.Digest) {
	e.t.Helper()
	img := blobImage(e.t, layers...)
	e.up.Push(repo, "v1", img)
	return img, blobsOf(e.t, img)[1:]
}

// pushBlobImage pushes an image whose only layer is content as repo:v1 and
// returns the layer's digest.
func (e *env) pushBlobImage(repo string, content []byte) digest.Digest {
	e.t.Helper()
	_, layers := e.pushLayers(repo, content)
	return layers[0]
}

// fetchManifest GETs repo:v1 through the proxy, which links the image's
// blobs to the repository.
func (e *env) fetchManifest(repo string) {
	e.t.Helper()
	if r := e.do(http.MethodGet, "/v2/"+upstreamName+"/"+repo+"/manifests/v1"); r.StatusCode != http.StatusOK {
		e.t.Fatalf("manifest %s:v1: status %d: %s", repo, r.StatusCode, r.body)
	}
}

// interceptBlobGETs makes upstream GETs of d wait until release is closed
// (nil: no wait), then lets answer reply in the upstream's place (nil: the
// upstream answers normally). The Docker-Content-Digest and Content-Type
// headers are set for answer.
func interceptBlobGETs(up *fakeregistry.Registry, d digest.Digest, release <-chan struct{}, answer func(w http.ResponseWriter)) {
	up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			return false
		}
		if release != nil {
			select {
			case <-release:
			case <-r.Context().Done():
				return true
			}
		}
		if answer == nil {
			return false
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", d.String())
		answer(w)
		return true
	})
}

// getAtOnce sends n GETs of path at once, closes release once all n are in
// the proxy's handler, and returns the answers.
func (e *env) getAtOnce(path string, n int, release chan<- struct{}) []response {
	e.t.Helper()
	results := make([]response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = e.do(http.MethodGet, path) })
	}
	eventually(e.t, fmt.Sprintf("%d requests are in the proxy", n), func() bool { return e.inflight.Load() == int64(n) })
	close(release)
	wg.Wait()
	return results
}

// badBodies are upstream blob answers that must never reach a client as
// a complete response, each given the good content.
var badBodies = map[string]func(w http.ResponseWriter, good []byte){
	"wrong middle byte": func(w http.ResponseWriter, good []byte) {
		b := bytes.Clone(good)
		b[len(b)/2] ^= 0xff
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	},
	// Only the last byte is wrong: a proxy that streamed every byte before
	// verifying would have completed the client's response.
	"wrong last byte": func(w http.ResponseWriter, good []byte) {
		b := bytes.Clone(good)
		b[len(b)-1] ^= 0xff
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
	},
	"truncated": func(w http.ResponseWriter, good []byte) {
		w.Header().Set("Content-Length", strconv.Itoa(len(good)))
		_, _ = w.Write(good[:len(good)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	},
	// No Content-Length: only the cut connection tells.
	"truncated chunked": func(w http.ResponseWriter, good []byte) {
		_, _ = w.Write(good[:len(good)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	},
}

// TestConcurrentColdBlob: 50 clients ask for one uncached blob at once;
// the upstream serves it once and all 50 get the verified bytes.
func TestConcurrentColdBlob(t *testing.T) {
	const clients = 50
	forEachSetup(t, func(t *testing.T, e *env, viaCDN bool) {
		content := randomBytes(t, 512<<10)
		d := e.pushBlobImage("team/app", content)
		e.fetchManifest("team/app")
		e.up.ResetCounts()

		// The upstream holds its answer until all 50 requests are in
		// the proxy, so they all find the blob uncached.
		release := make(chan struct{})
		interceptBlobGETs(e.up, d, release, nil)
		for _, r := range e.getAtOnce(blobPath("team/app", d), clients, release) {
			if r.StatusCode != http.StatusOK || r.readErr != nil {
				t.Fatalf("status %d, read error %v", r.StatusCode, r.readErr)
			}
			sameBytes(t, "blob", r.body, content)
		}
		if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
			t.Errorf("upstream blob GETs = %d, want 1 (%v)", n, e.up.Requests())
		}
		if n := e.up.Count(http.MethodHead, "/blobs/"); n != 0 {
			t.Errorf("upstream blob HEADs = %d, want 0: the manifest linked the blob", n)
		}
		if viaCDN && e.up.CDNRequests() != 1 {
			t.Errorf("CDN served %d GETs, want 1", e.up.CDNRequests())
		}
		t.Logf("%d clients: %d upstream requests, %d CDN requests", clients, e.up.Total(), e.up.CDNRequests())
		eventually(t, "the blob is committed", func() bool { return committed(t, e.store, d) })
	})
}

// TestConcurrentBlobWithoutManifest: a blob asked for in a repository the
// cache has no manifest for is confirmed upstream first, once for all
// concurrent clients; still one GET.
func TestConcurrentBlobWithoutManifest(t *testing.T) {
	const clients = 50
	e := newEnv(t, "inmemory")
	content := randomBytes(t, 256<<10)
	d := e.pushBlobImage("team/app", content)
	release := make(chan struct{})
	interceptBlobGETs(e.up, d, release, nil)
	for _, r := range e.getAtOnce(blobPath("team/app", d), clients, release) {
		if r.StatusCode != http.StatusOK || r.readErr != nil || !bytes.Equal(r.body, content) {
			t.Errorf("status %d, read error %v, %d bytes", r.StatusCode, r.readErr, len(r.body))
		}
	}
	if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
	// Requests that find no link share one confirming HEAD; a request
	// that missed the link just before a HEAD finished may start one more.
	heads := e.up.Count(http.MethodHead, "/blobs/")
	if heads < 1 || heads > 3 {
		t.Errorf("upstream blob HEADs = %d, want 1 (at most 3)", heads)
	}
	t.Logf("%d clients without a manifest: %d upstream blob HEADs, 1 GET", clients, heads)
}

// TestBadUpstreamBlobIsNotServedOrCached: an upstream that sends wrong
// bytes (with the right length) or cuts the body off never completes a
// client's 200 response, and nothing is cached: the next request fetches
// again.
func TestBadUpstreamBlobIsNotServedOrCached(t *testing.T) {
	const size = 256 << 10
	forEachDriver(t, func(t *testing.T, driver string) {
		for _, name := range []string{"wrong middle byte", "wrong last byte", "truncated", "truncated chunked"} {
			t.Run(name, func(t *testing.T) {
				e := newEnv(t, driver)
				content := randomBytes(t, size)
				d := e.pushBlobImage("team/app", content)
				e.fetchManifest("team/app")
				interceptBlobGETs(e.up, d, nil, func(w http.ResponseWriter) { badBodies[name](w, content) })

				for attempt := 1; attempt <= 2; attempt++ {
					r := e.do(http.MethodGet, blobPath("team/app", d))
					t.Logf("attempt %d: client got status %d, %d bytes, read error %v", attempt, r.StatusCode, len(r.body), r.readErr)
					if r.StatusCode == http.StatusOK && r.readErr == nil {
						t.Fatalf("attempt %d: a complete 200 response of %d bytes from a bad upstream body", attempt, len(r.body))
					}
					if committed(t, e.store, d) {
						t.Fatalf("attempt %d: bad blob cached", attempt)
					}
					if n := e.up.Count(http.MethodGet, "/blobs/"+d.String()); n != attempt {
						t.Errorf("attempt %d: upstream GETs = %d, want %d: every attempt fetches again", attempt, n, attempt)
					}
				}

				e.up.SetOverride(nil)
				r := e.do(http.MethodGet, blobPath("team/app", d))
				if r.StatusCode != http.StatusOK || r.readErr != nil {
					t.Fatalf("after the upstream recovered: status %d, %v", r.StatusCode, r.readErr)
				}
				sameBytes(t, "recovered blob", r.body, content)
				// The client has its last byte once the blob is verified;
				// the commit follows.
				eventually(t, "the good blob is committed", func() bool { return committed(t, e.store, d) })
			})
		}
	})
}

// TestConcurrentClientsOfACorruptBlob: clients that joined one fill of a
// corrupt blob all fail, after one upstream GET, and nothing is cached.
func TestConcurrentClientsOfACorruptBlob(t *testing.T) {
	const clients = 20
	e := newEnv(t, "filesystem")
	content := randomBytes(t, 256<<10)
	d := e.pushBlobImage("team/app", content)
	e.fetchManifest("team/app")
	release := make(chan struct{})
	interceptBlobGETs(e.up, d, release, func(w http.ResponseWriter) { badBodies["wrong last byte"](w, content) })
	statuses := map[string]int{}
	for _, r := range e.getAtOnce(blobPath("team/app", d), clients, release) {
		if r.StatusCode == http.StatusOK && r.readErr == nil {
			t.Errorf("a client got a complete 200 response of %d bytes", len(r.body))
		}
		statuses[fmt.Sprintf("%d, cut off: %v", r.StatusCode, r.readErr != nil)]++
	}
	t.Logf("%d clients of a corrupt blob: %v", clients, statuses)
	// The clients share one fill. On a loaded machine a client can still be
	// on its way to the fill (access checks, the link lookup) when the fill
	// fails; it then starts the retry that a later client would, which is
	// right. More than that means the fill was not shared.
	if n := e.up.Count(http.MethodGet, "/blobs/"); n < 1 || n > 2 {
		t.Errorf("upstream GETs = %d, want 1 (2 when a client arrived after the shared fill failed)", n)
	}
	if committed(t, e.store, d) {
		t.Errorf("corrupt blob cached")
	}
}

// TestBlobRangeAndHead: Range on a cached blob gives 206 with
// Content-Range; a Range on an uncached one is answered once it is
// verified; HEAD gives the size, cached or not, without a body.
func TestBlobRangeAndHead(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		e := newEnv(t, driver)
		a, b := randomBytes(t, 100<<10), randomBytes(t, 50<<10)
		_, layers := e.pushLayers("team/app", a, b)
		da, db := layers[0], layers[1]
		e.fetchManifest("team/app")

		// HEAD of an uncached blob asks the upstream.
		r := e.do(http.MethodHead, blobPath("team/app", db))
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Length") != strconv.Itoa(len(b)) || len(r.body) != 0 {
			t.Errorf("HEAD uncached: status %d, Content-Length %q, %d body bytes", r.StatusCode, r.Header.Get("Content-Length"), len(r.body))
		}
		if n := e.up.Count(http.MethodGet, "/blobs/"); n != 0 {
			t.Errorf("HEAD of an uncached blob made %d upstream GETs", n)
		}

		if r := e.do(http.MethodGet, blobPath("team/app", da)); r.StatusCode != http.StatusOK {
			t.Fatalf("GET: %d", r.StatusCode)
		}
		e.up.ResetCounts()
		for _, tc := range []struct{ rng, contentRange string }{
			{"bytes=100-1099", fmt.Sprintf("bytes 100-1099/%d", len(a))},
			{"bytes=-10", fmt.Sprintf("bytes %d-%d/%d", len(a)-10, len(a)-1, len(a))},
			{fmt.Sprintf("bytes=%d-", len(a)-5), fmt.Sprintf("bytes %d-%d/%d", len(a)-5, len(a)-1, len(a))},
		} {
			r := e.do(http.MethodGet, blobPath("team/app", da), "Range", tc.rng)
			var from, to int
			fmt.Sscanf(tc.contentRange, "bytes %d-%d/", &from, &to)
			if r.StatusCode != http.StatusPartialContent || r.Header.Get("Content-Range") != tc.contentRange {
				t.Errorf("Range %s: status %d, Content-Range %q; want 206, %q", tc.rng, r.StatusCode, r.Header.Get("Content-Range"), tc.contentRange)
				continue
			}
			sameBytes(t, "range "+tc.rng, r.body, a[from:to+1])
		}
		r = e.do(http.MethodHead, blobPath("team/app", da))
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Length") != strconv.Itoa(len(a)) || r.Header.Get("Docker-Content-Digest") != da.String() || len(r.body) != 0 {
			t.Errorf("HEAD cached: status %d, Content-Length %q, Docker-Content-Digest %q, %d body bytes",
				r.StatusCode, r.Header.Get("Content-Length"), r.Header.Get("Docker-Content-Digest"), len(r.body))
		}
		if n := e.up.Total(); n != 0 {
			t.Errorf("ranges and HEAD of a cached blob made %d upstream requests", n)
		}

		// A range of a blob not cached yet.
		r = e.do(http.MethodGet, blobPath("team/app", db), "Range", "bytes=10-19")
		if r.StatusCode != http.StatusPartialContent || r.Header.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(b)) {
			t.Errorf("Range on an uncached blob: status %d, Content-Range %q", r.StatusCode, r.Header.Get("Content-Range"))
		}
		sameBytes(t, "range of an uncached blob", r.body, b[10:20])
		if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
			t.Errorf("upstream GETs = %d, want 1", n)
		}
	})
}

// TestClientDisconnectDoesNotAbortFill: the client whose request started a
// fill goes away mid-blob; another client still gets the whole blob from
// the same single upstream fetch, and the blob is cached.
func TestClientDisconnectDoesNotAbortFill(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		e := newEnv(t, driver)
		content := randomBytes(t, 2<<20)
		d := e.pushBlobImage("team/app", content)
		e.fetchManifest("team/app")

		// The upstream sends the first half, then waits for the gate.
		gate := make(chan struct{})
		e.up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
				return false
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			_, _ = w.Write(content[:len(content)/2])
			w.(http.Flusher).Flush()
			select {
			case <-gate:
			case <-r.Context().Done():
				return true
			}
			_, _ = w.Write(content[len(content)/2:])
			return true
		})

		// The first client reads the first 64 KiB while the upstream is
		// still held: bytes flow before the blob is whole.
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+blobPath("team/app", d), nil)
		first, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 64<<10)
		if _, err := io.ReadFull(first.Body, head); err != nil {
			t.Fatalf("first client: %v", err)
		}
		sameBytes(t, "first 64 KiB", head, content[:len(head)])

		// A second client joins the fill.
		second := make(chan response, 1)
		go func() { second <- e.do(http.MethodGet, blobPath("team/app", d)) }()
		eventually(t, "both clients follow the fill", func() bool { return e.gauge("pullbroker_fill_clients") == 2 })

		// The first client goes away; its reader is released.
		cancel()
		first.Body.Close()
		eventually(t, "the first client's reader is closed", func() bool { return e.gauge("pullbroker_fill_clients") == 1 })
		if e.gauge("pullbroker_fills_in_flight") != 1 {
			t.Fatal("the fill stopped with its first client")
		}

		close(gate)
		select {
		case r := <-second:
			if r.StatusCode != http.StatusOK || r.readErr != nil {
				t.Fatalf("second client: status %d, %v", r.StatusCode, r.readErr)
			}
			sameBytes(t, "second client", r.body, content)
		case <-time.After(15 * time.Second):
			t.Fatal("second client never finished")
		}
		if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
			t.Errorf("upstream blob GETs = %d, want 1", n)
		}
		eventually(t, "the blob is committed", func() bool { return committed(t, e.store, d) })
		e.up.SetOverride(nil)
		r := e.do(http.MethodGet, blobPath("team/app", d))
		sameBytes(t, "from cache", r.body, content)
		if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
			t.Errorf("upstream blob GETs after a cache hit = %d, want 1", n)
		}
	})
}

// TestBlobNotSharedAcrossRepositories: a blob cached through repository A
// is served for repository B only once the upstream confirms B holds it.
func TestBlobNotSharedAcrossRepositories(t *testing.T) {
	e := newEnv(t, "filesystem")
	content := randomBytes(t, 32<<10)
	img, layers := e.pushLayers("team/a", content)
	_, manifestDigest, _ := manifestOf(t, img)
	d := layers[0]
	e.fetchManifest("team/a")
	if r := e.do(http.MethodGet, blobPath("team/a", d)); r.StatusCode != http.StatusOK {
		t.Fatalf("blob via team/a: %d", r.StatusCode)
	}
	e.up.ResetCounts()

	wantError(t, "GET blob via team/b", e.do(http.MethodGet, blobPath("team/b", d)), http.StatusNotFound, "BLOB_UNKNOWN")
	if r := e.do(http.MethodHead, blobPath("team/b", d)); r.StatusCode != http.StatusNotFound || len(r.body) != 0 {
		t.Errorf("HEAD blob via team/b: status %d, %d body bytes; want 404 and none", r.StatusCode, len(r.body))
	}
	wantError(t, "manifest by digest via team/b", e.do(http.MethodGet, "/v2/"+upstreamName+"/team/b/manifests/"+manifestDigest.String()),
		http.StatusNotFound, "MANIFEST_UNKNOWN")
	if n := e.up.Count(http.MethodHead, "/v2/team/b/blobs/"); n != 2 {
		t.Errorf("upstream asked %d times whether team/b holds the blob, want 2", n)
	}

	// Now the upstream has it in team/b too.
	e.up.Push("team/b", "v1", img)
	e.up.ResetCounts()
	r := e.do(http.MethodGet, blobPath("team/b", d))
	if r.StatusCode != http.StatusOK {
		t.Fatalf("blob via team/b once upstream holds it: %d %s", r.StatusCode, r.body)
	}
	sameBytes(t, "team/b blob", r.body, content)
	if heads, gets := e.up.Count(http.MethodHead, "/blobs/"), e.up.Count(http.MethodGet, "/blobs/"); heads != 1 || gets != 0 {
		t.Errorf("upstream: %d blob HEADs, %d blob GETs; want 1 confirmation and the bytes from the cache", heads, gets)
	}
	// Confirmed once, remembered.
	e.do(http.MethodGet, blobPath("team/b", d))
	if n := e.up.Total(); n != 1 {
		t.Errorf("upstream requests = %d, want 1", n)
	}
}
