package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
)

// wantedGET is a GET through the proxy and the body it must answer.
type wantedGET struct {
	path string
	body []byte
}

// imageGETs are the GETs of a pull of img (manifest at ref, config,
// layers) under repo.
func imageGETs(t *testing.T, repo, ref string, img v1.Image) []wantedGET {
	t.Helper()
	base := "/v2/" + upstreamName + "/" + repo + "/"
	raw, _, _ := manifestOf(t, img)
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	out := []wantedGET{{base + "manifests/" + ref, raw}, {base + "blobs/" + digest.FromBytes(cfg).String(), cfg}}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		b := readLayer(t, l)
		out = append(out, wantedGET{base + "blobs/" + digest.FromBytes(b).String(), b})
	}
	return out
}

// indexGETs are the GETs of a pull of every platform of idx.
func indexGETs(t *testing.T, repo, tag string, idx v1.ImageIndex) []wantedGET {
	t.Helper()
	raw, _, _ := manifestOf(t, idx)
	out := []wantedGET{{"/v2/" + upstreamName + "/" + repo + "/manifests/" + tag, raw}}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, child := range im.Manifests {
		img, err := idx.Image(child.Digest)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, imageGETs(t, repo, child.Digest.String(), img)...)
	}
	return out
}

// blobFile is where the filesystem driver keeps the blob d.
func blobFile(root string, d digest.Digest) string {
	return filepath.Join(root, "blobs", d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
}

func stored(t *testing.T, root string, d digest.Digest) bool {
	t.Helper()
	_, err := os.Stat(blobFile(root, d))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

// TestGCWhileClientsPull: a cache holding tagged, sticky-pinned and locked
// images, an image pulled only by digest and the old digest of a moved
// tag, all committed two days ago, and one image pulled by digest just
// now. A dry run lists exactly the two old unreferenced images and removes
// nothing; GC runs while 20 clients pull the referenced images: every
// answer is whole and right, the old unreferenced images go, the young
// one stays, and a removed image is fetched again when pulled.
func TestGCWhileClientsPull(t *testing.T) {
	const clients = 20
	e, cfg, lockedIdx := newEnvWithPinnedAndLocked(t)
	root := cfg.Storage.Parameters["rootdirectory"].(string)
	newImage := func() v1.Image { return blobImage(t, randomBytes(t, 8<<10), randomBytes(t, 8<<10)) }

	var referenced []wantedGET
	pinned := newImage()
	e.up.Push("team/pinned", "v1", pinned)
	referenced = append(referenced, imageGETs(t, "team/pinned", "v1", pinned)...)
	e.up.PushIndex("team/locked", "v1", lockedIdx)
	referenced = append(referenced, indexGETs(t, "team/locked", "v1", lockedIdx)...)
	for i := range 3 {
		img := newImage()
		e.up.Push(fmt.Sprintf("team/app%d", i), "v1", img)
		referenced = append(referenced, imageGETs(t, fmt.Sprintf("team/app%d", i), "v1", img)...)
	}
	byDigest := newImage()
	_, byDigestDigest, _ := manifestOf(t, byDigest)
	e.up.Push("team/bydigest", "v1", byDigest)
	byDigestGETs := imageGETs(t, "team/bydigest", byDigestDigest.String(), byDigest)
	oldMoved, newMoved := newImage(), newImage()
	e.up.Push("team/moved", "v1", oldMoved)
	oldMovedGETs := imageGETs(t, "team/moved", "v1", oldMoved)

	// get may run on any goroutine: it reports, never fails the test.
	get := func(e *env, w wantedGET) error {
		resp, err := http.Get(e.srv.URL + w.path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || err != nil {
			return fmt.Errorf("GET %s: status %d, %v", w.path, resp.StatusCode, err)
		}
		if !bytes.Equal(body, w.body) {
			return fmt.Errorf("GET %s: %d bytes, not the %d wanted", w.path, len(body), len(w.body))
		}
		return nil
	}
	getAll := func(e *env, ws []wantedGET) {
		t.Helper()
		for _, w := range ws {
			if err := get(e, w); err != nil {
				t.Fatal(err)
			}
		}
	}
	getAll(e, referenced)
	getAll(e, byDigestGETs)
	getAll(e, oldMovedGETs)
	e.up.Push("team/moved", "v1", newMoved)
	e.clock.Advance(tagTTL + time.Second)
	movedGETs := imageGETs(t, "team/moved", "v1", newMoved)
	getAll(e, movedGETs)
	referenced = append(referenced, movedGETs...)

	ageBlobs(t, root, 48*time.Hour, nil)
	oldUnreferenced := map[digest.Digest]bool{}
	for _, d := range append(imageDigests(t, byDigest), imageDigests(t, oldMoved)...) {
		oldUnreferenced[d] = true
	}

	// A restart, as a process that did not see these blobs committed.
	r := e.reopened(cfg, 0)
	young := newImage()
	_, youngDigest, _ := manifestOf(t, young)
	e.up.Push("team/young", "v1", young)
	getAll(r, imageGETs(t, "team/young", youngDigest.String(), young))

	const grace = 24 * time.Hour
	report, err := r.store.GC(t.Context(), grace, true)
	if err != nil {
		t.Fatal(err)
	}
	removed := func(report cache.GCReport) map[digest.Digest]bool {
		out := map[digest.Digest]bool{}
		for _, b := range report.Removed {
			out[b.Digest] = true
		}
		return out
	}
	t.Logf("dry run: %d digests marked, %d unreferenced young blobs kept, %d would be removed", report.Marked, report.Young, len(report.Removed))
	if got := removed(report); !maps.Equal(got, oldUnreferenced) {
		t.Fatalf("dry run would remove %v, want %v", slices.Collect(maps.Keys(got)), slices.Collect(maps.Keys(oldUnreferenced)))
	}
	for d := range oldUnreferenced {
		if !stored(t, root, d) {
			t.Fatalf("dry run removed %s", d)
		}
	}

	// 20 clients pull the referenced images over and over while GC runs.
	var failed, answered atomic.Int64
	var firstErr sync.Once
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := get(r, referenced[i%len(referenced)]); err != nil {
					failed.Add(1)
					firstErr.Do(func() { t.Error(err) })
				}
				answered.Add(1)
			}
		}()
	}
	for range 3 {
		if report, err = r.store.GC(t.Context(), grace, false); err != nil {
			t.Error(err)
		}
		if len(report.Removed) > 0 {
			if got := removed(report); !maps.Equal(got, oldUnreferenced) {
				t.Errorf("GC removed %v, want %v", slices.Collect(maps.Keys(got)), slices.Collect(maps.Keys(oldUnreferenced)))
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d answers to %d clients during GC, %d failed", answered.Load(), clients, failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d pulls failed during GC", failed.Load())
	}
	for d := range oldUnreferenced {
		if stored(t, root, d) {
			t.Errorf("unreferenced blob %s older than the grace period is still stored", d)
		}
	}
	for _, d := range imageDigests(t, young) {
		if !stored(t, root, d) {
			t.Errorf("unreferenced blob %s within the grace period was removed", d)
		}
	}
	for _, w := range referenced {
		if d := digest.FromBytes(w.body); !stored(t, root, d) {
			t.Errorf("referenced blob %s (%s) was removed", d, w.path)
		}
	}
	if got := r.counter("pullbroker_evictions_total", "gc"); got != float64(len(oldUnreferenced)) {
		t.Errorf("pullbroker_evictions_total{reason=gc} = %v, want %d", got, len(oldUnreferenced))
	}
	if got := r.counter("pullbroker_gc_runs_total", "ok"); got != 4 {
		t.Errorf("pullbroker_gc_runs_total{result=ok} = %v, want 4", got)
	}

	// What GC removed is fetched again when pulled.
	e.up.ResetCounts()
	getAll(r, byDigestGETs)
	if n := e.up.Count(http.MethodGet, "/blobs/"); n != 2+1 {
		t.Errorf("%d upstream blob GETs to pull the removed image again, want 3", n)
	}
}
