package proxy_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// tagPath is the prefix-form path of repo's manifest by reference.
func tagPath(repo, ref string) string {
	return "/v2/" + upstreamName + "/" + repo + "/manifests/" + ref
}

// TestTagTTL: within the tag TTL a tag costs no upstream request; after it,
// one HEAD revalidates, and a GET (by digest) follows only when the tag
// moved.
func TestTagTTL(t *testing.T) {
	e := newEnv(t, "inmemory")
	img1 := blobImage(t, randomBytes(t, 1024))
	e.up.Push("team/app", "v1", img1)
	_, d1, _ := manifestOf(t, img1)

	if r := e.do(http.MethodHead, tagPath("team/app", "v1")); r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d1.String() {
		t.Fatalf("first HEAD: status %d, digest %q", r.StatusCode, r.Header.Get("Docker-Content-Digest"))
	}
	if pings, heads, gets := e.up.Pings(), e.up.Count(http.MethodHead, "/manifests/v1"), e.up.Count(http.MethodGet, "/manifests/"+d1.String()); pings != 1 || heads != 1 || gets != 1 || e.up.Total() != 3 {
		t.Errorf("first resolve: %v; want a ping, a HEAD by tag and a GET by digest", e.up.Requests())
	}

	// 100 HEADs within the TTL, 10 at a time.
	e.up.ResetCounts()
	e.clock.Advance(tagTTL - time.Second)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			for range 10 {
				r := e.do(http.MethodHead, tagPath("team/app", "v1"))
				if r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d1.String() {
					t.Errorf("HEAD within TTL: status %d, digest %q", r.StatusCode, r.Header.Get("Docker-Content-Digest"))
				}
			}
		})
	}
	wg.Wait()
	if n := e.up.Total(); n != 0 {
		t.Errorf("100 tag HEADs within the TTL made %d upstream requests: %v", n, e.up.Requests())
	}

	// After the TTL, unchanged: one HEAD revalidates, and the record is
	// fresh again for the next 99.
	e.clock.Advance(2 * time.Second)
	for range 100 {
		if r := e.do(http.MethodHead, tagPath("team/app", "v1")); r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d1.String() {
			t.Fatalf("HEAD after TTL: status %d, digest %q", r.StatusCode, r.Header.Get("Docker-Content-Digest"))
		}
	}
	if heads, gets := e.up.Count(http.MethodHead, "/manifests/"), e.up.Count(http.MethodGet, "/manifests/"); heads != 1 || gets != 0 || e.up.Total() != 1 {
		t.Errorf("after the TTL: %d upstream HEADs, %d GETs (%v); want 1 HEAD and no GET", heads, gets, e.up.Requests())
	}

	// The tag moves upstream: after the TTL, HEAD then GET by digest.
	img2 := blobImage(t, randomBytes(t, 1024))
	e.up.Push("team/app", "v1", img2)
	raw2, d2, _ := manifestOf(t, img2)
	e.up.ResetCounts()
	e.clock.Advance(tagTTL + time.Second)
	r := e.do(http.MethodGet, tagPath("team/app", "v1"))
	if r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != d2.String() || !bytes.Equal(r.body, raw2) {
		t.Fatalf("moved tag: status %d, digest %q; want the new manifest %s", r.StatusCode, r.Header.Get("Docker-Content-Digest"), d2)
	}
	if heads, byDigest, byTag := e.up.Count(http.MethodHead, "/manifests/v1"), e.up.Count(http.MethodGet, "/manifests/"+d2.String()), e.up.Count(http.MethodGet, "/manifests/v1"); heads != 1 || byDigest != 1 || byTag != 0 || e.up.Total() != 2 {
		t.Errorf("moved tag: %v; want one HEAD by tag and one GET by the new digest", e.up.Requests())
	}
	// The old manifest stays available by digest, from the cache.
	if r := e.do(http.MethodGet, tagPath("team/app", d1.String())); r.StatusCode != http.StatusOK || e.up.Total() != 2 {
		t.Errorf("old digest: status %d, %d upstream requests", r.StatusCode, e.up.Total())
	}
}

// TestUpstreamDown: once the upstream is gone and the TTL has passed, a
// cached tag is served stale with a Warning, cached blobs are served, and
// what is not cached is 503 UNAVAILABLE.
func TestUpstreamDown(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		e := newEnv(t, driver)
		a := randomBytes(t, 8<<10)
		img, layers := e.pushLayers("team/app", a, randomBytes(t, 8<<10))
		e.up.PushRandom("team/other", "v1")
		raw, dgst, _ := manifestOf(t, img)
		e.fetchManifest("team/app")
		if r := e.do(http.MethodGet, blobPath("team/app", layers[0])); r.StatusCode != http.StatusOK {
			t.Fatalf("blob: %d", r.StatusCode)
		}

		e.up.Close()
		e.clock.Advance(tagTTL + time.Second)

		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := e.do(method, tagPath("team/app", "v1"))
			if r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != dgst.String() {
				t.Fatalf("%s stale tag: status %d: %s", method, r.StatusCode, r.body)
			}
			if w := r.Header.Get("Warning"); !strings.HasPrefix(w, "110 ") {
				t.Errorf("%s stale tag: Warning %q, want a 110 warning", method, w)
			}
			if method == http.MethodGet && !bytes.Equal(r.body, raw) {
				t.Errorf("stale tag: body differs from the upstream's manifest")
			}
		}
		if r := e.do(http.MethodGet, tagPath("team/app", dgst.String())); r.StatusCode != http.StatusOK || !bytes.Equal(r.body, raw) {
			t.Errorf("manifest by digest: status %d", r.StatusCode)
		}
		r := e.do(http.MethodGet, blobPath("team/app", layers[0]))
		if r.StatusCode != http.StatusOK {
			t.Errorf("cached blob: status %d", r.StatusCode)
		}
		sameBytes(t, "cached blob", r.body, a)

		wantError(t, "uncached blob", e.do(http.MethodGet, blobPath("team/app", layers[1])), http.StatusServiceUnavailable, "UNAVAILABLE")
		uncached := e.do(http.MethodGet, tagPath("team/other", "v1"))
		wantError(t, "uncached tag", uncached, http.StatusServiceUnavailable, "UNAVAILABLE")
		// The answer names the upstream and a generic cause; where it is
		// and how dialling it failed go to the log only.
		upstreamHost := strings.TrimPrefix(e.up.URL(), "http://")
		if body := string(uncached.body); strings.Contains(body, upstreamHost) || strings.Contains(body, "dial") ||
			!strings.Contains(body, upstreamName) || !strings.Contains(body, "could not be reached") {
			t.Errorf("uncached tag answer: %s, want the upstream's name and a generic cause, no address", body)
		}
		if logs := e.logs.String(); !strings.Contains(logs, uncached.Header.Get("X-Request-Id")) || !strings.Contains(logs, upstreamHost) {
			t.Errorf("the log has no detail for request %s", uncached.Header.Get("X-Request-Id"))
		}
		wantError(t, "uncached repository's blob", e.do(http.MethodGet, blobPath("team/other", layers[0])), http.StatusServiceUnavailable, "UNAVAILABLE")

		// The tag list falls back to the tags the cache knows.
		r = e.do(http.MethodGet, "/v2/"+upstreamName+"/team/app/tags/list")
		var list struct{ Tags []string }
		if r.StatusCode != http.StatusOK || json.Unmarshal(r.body, &list) != nil || !slices.Equal(list.Tags, []string{"v1"}) {
			t.Errorf("tags/list with the upstream down: status %d, %s", r.StatusCode, r.body)
		}
	})
}
