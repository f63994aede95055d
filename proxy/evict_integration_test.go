package proxy_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/tags"
)

// pullIndex pulls every platform of an index through the proxy by tag
// and checks every byte.
func (e *env) pullIndex(repoTag string, want v1.ImageIndex) {
	t := e.t
	t.Helper()
	im, err := want.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, child := range im.Manifests {
		wantImg, err := want.Image(child.Digest)
		if err != nil {
			t.Fatal(err)
		}
		pulled, err := remote.Image(e.pullRef(repoTag), remote.WithPlatform(*child.Platform))
		if err != nil {
			t.Fatalf("pulling %s %s: %v", repoTag, child.Platform, err)
		}
		pullImage(t, pulled, wantImg)
	}
}

// pull pulls an image through the proxy by tag and checks every byte.
func (e *env) pull(repoTag string, want v1.Image) {
	e.t.Helper()
	pulled, err := remote.Image(e.pullRef(repoTag))
	if err != nil {
		e.t.Fatalf("pulling %s: %v", repoTag, err)
	}
	pullImage(e.t, pulled, want)
}

// indexDigests are an index's own digest and those of its manifests,
// configs and layers.
func indexDigests(t *testing.T, idx v1.ImageIndex) []digest.Digest {
	t.Helper()
	_, d, _ := manifestOf(t, idx)
	out := []digest.Digest{d}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, child := range im.Manifests {
		img, err := idx.Image(child.Digest)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, imageDigests(t, img)...)
	}
	return out
}

// imageDigests are an image's manifest, config and layer digests.
func imageDigests(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	_, d, _ := manifestOf(t, img)
	return append([]digest.Digest{d}, blobsOf(t, img)...)
}

// ageBlobs sets the modification time of every blob under a filesystem
// cache root to age ago (an hour earlier for those in oldest), which a new
// Store takes as their last-read time: as a cache left by a previous run.
// It returns the bytes of the blobs it aged.
func ageBlobs(t *testing.T, root string, age time.Duration, oldest []digest.Digest) (bytes int64) {
	t.Helper()
	first := map[string]bool{}
	for _, d := range oldest {
		first[d.Encoded()] = true
	}
	err := filepath.WalkDir(filepath.Join(root, "blobs"), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		when := time.Now().Add(-age)
		if first[filepath.Base(filepath.Dir(p))] {
			when = when.Add(-time.Hour)
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		bytes += info.Size()
		return os.Chtimes(p, when, when)
	})
	if err != nil {
		t.Fatal(err)
	}
	return bytes
}

// newEnvWithPinnedAndLocked is a proxy on the filesystem whose pin rules
// make team/pinned sticky and team/locked locked to a two-platform index
// (returned, not yet pushed) by a lock file.
func newEnvWithPinnedAndLocked(t *testing.T) (*env, *config.Config, v1.ImageIndex) {
	t.Helper()
	lockedIdx := fakeregistry.RandomIndex(t, types.OCIImageIndex,
		v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"})
	_, lockedDigest, _ := manifestOf(t, lockedIdx)
	lockFile := filepath.Join(t.TempDir(), "images.lock")
	if err := os.WriteFile(lockFile, []byte("pins:\n  "+upstreamName+"/team/locked:v1: "+lockedDigest.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg *config.Config
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) {
		c.Pins = []config.PinRule{
			{Registry: upstreamName, Repository: "team/pinned", Policy: config.PolicySticky},
			{Registry: upstreamName, Repository: "team/locked", Policy: config.PolicyLocked, LockFile: lockFile},
		}
		cfg = c
	})
	return e, cfg, lockedIdx
}

// reopened is a proxy over cfg's storage opened anew, as a restarted
// process opens it: a new Store (maxSizeBytes limit, the lock files'
// digests as roots) that has seen no commit or read, started and leading.
func (e *env) reopened(cfg *config.Config, limit int64) *env {
	t := e.t
	t.Helper()
	drv, localRoot, err := cache.OpenDriver(t.Context(), cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	locked, err := tags.LockedRoots(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &env{t: t, up: e.up, clock: e.clock, metrics: prometheus.NewRegistry(), logs: &testenv.SyncBuffer{}}
	r.store, err = cache.New(drv, cache.Options{Registerer: r.metrics, LocalRoot: localRoot, SpoolDir: cfg.Storage.SpoolDir,
		MaxSizeBytes: limit,
		Roots:        func(context.Context) ([]cache.Root, error) { return locked, nil }})
	if err != nil {
		t.Fatal(err)
	}
	r.serve(cfg)
	r.store.Start(t.Context())
	leading, stopLeading := context.WithCancel(t.Context())
	led := make(chan struct{})
	go func() {
		defer close(led)
		r.store.Lead(leading)
	}()
	t.Cleanup(func() { // before the storage directory is removed
		stopLeading()
		<-led
	})
	return r
}

// TestEvictionKeepsPinnedAndLockedImages fills a cache with many images,
// one pinned (a sticky rule) and one locked (a multi-platform index named
// by a lock file), all read longest ago so that LRU alone would evict
// them first; a restart with storage.maxSizeBytes at half of it settles
// under the limit and evicts neither: both pull whole with the upstream
// gone. An evicted image is fetched again on demand.
func TestEvictionKeepsPinnedAndLockedImages(t *testing.T) {
	e, cfg, lockedIdx := newEnvWithPinnedAndLocked(t)
	pinnedImg := blobImage(t, randomBytes(t, 16<<10), randomBytes(t, 16<<10))
	e.up.Push("team/pinned", "v1", pinnedImg)
	e.up.PushIndex("team/locked", "v1", lockedIdx)
	apps := make([]v1.Image, 8)
	for i := range apps {
		apps[i] = blobImage(t, randomBytes(t, 16<<10), randomBytes(t, 16<<10))
		e.up.Push(fmt.Sprintf("team/app%d", i), "v1", apps[i])
	}
	e.pull("team/pinned:v1", pinnedImg)
	e.pullIndex("team/locked:v1", lockedIdx)
	for i, img := range apps {
		e.pull(fmt.Sprintf("team/app%d:v1", i), img)
	}
	protected := append(imageDigests(t, pinnedImg), indexDigests(t, lockedIdx)...)
	total := ageBlobs(t, cfg.Storage.Parameters["rootdirectory"].(string), 2*time.Hour, protected)

	// The restart with a limit: eviction runs once the walk measured it.
	limit := total / 2
	r := e.reopened(cfg, limit)
	eventually(t, "the cache is under storage.maxSizeBytes", func() bool {
		return r.counter("pullbroker_evictions_total", "size") > 0 && int64(r.gauge("pullbroker_cache_size_bytes")) <= limit
	})
	t.Logf("%d bytes cached, limit %d: %v blobs (%v bytes) evicted", total, limit,
		r.counter("pullbroker_evictions_total", "size"), r.counter("pullbroker_evicted_bytes_total", "size"))
	for _, d := range protected {
		if !committed(t, r.store, d) {
			t.Errorf("pinned or locked blob %s was evicted", d)
		}
	}

	// An evicted image is fetched again on demand.
	var evicted int
	for i, img := range apps {
		if committed(t, r.store, imageDigests(t, img)[2]) {
			continue
		}
		evicted++
		e.up.ResetCounts()
		r.pull(fmt.Sprintf("team/app%d:v1", i), img)
		if n := e.up.Count("GET", "/blobs/"); n == 0 {
			t.Errorf("app%d: evicted, pulled again with no upstream blob request", i)
		}
	}
	if evicted == 0 {
		t.Fatal("no unpinned image was evicted")
	}

	// The pinned and locked images pull whole with the upstream gone.
	e.up.Close()
	r.pull("team/pinned:v1", pinnedImg)
	r.pullIndex("team/locked:v1", lockedIdx)
}

// counter reads one labelled series of a counter from the proxy's metrics.
func (e *env) counter(name, label string) float64 {
	e.t.Helper()
	families, err := e.metrics.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	e.t.Fatalf("no counter %s{%s}", name, label)
	return 0
}
