package mirror_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/mirror"
	"github.com/pullbroker/pullbroker/proxy"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

const upstreamName = "upstream.test"

// testProxy is a proxy's parts as cmd/pullbroker wires them.
type testProxy struct {
	cfg     *config.Config
	handler *proxy.Handler
	tags    *tags.Resolver
	store   *cache.Store
}

// newProxy is a proxy over its own filesystem cache in front of up; up
// nil makes it an offline proxy.
func newProxy(t *testing.T, up *fakeregistry.Registry) testProxy {
	t.Helper()
	u := config.Upstream{Name: upstreamName, Endpoint: "http://127.0.0.1:1", TagTTL: time.Minute,
		DialTimeout: time.Second, ResponseTimeout: 5 * time.Second}
	// Clients from anywhere but 10/8 are refused: sync, export and import
	// are the proxy's own clients and must not be.
	cfg := &config.Config{Mode: config.ModeOnline, Upstreams: []config.Upstream{u},
		Access: config.Access{AllowedNetworks: []string{"10.0.0.0/8"}}}
	if up == nil {
		cfg.Mode = config.ModeOffline
	} else {
		cfg.Upstreams[0].Endpoint = up.URL()
	}
	root := t.TempDir()
	drv, localRoot, err := cache.OpenDriver(t.Context(), config.Storage{Driver: "filesystem", Parameters: map[string]any{"rootdirectory": root}})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(drv, cache.Options{LocalRoot: localRoot})
	if err != nil {
		t.Fatal(err)
	}
	client, err := upstream.New(cfg.Upstreams[0], upstream.Options{Offline: up == nil})
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*upstream.Client{upstreamName: client}
	resolver, err := tags.New(tags.Options{Config: cfg, Store: store, Upstreams: clients})
	if err != nil {
		t.Fatal(err)
	}
	h, err := proxy.New(proxy.Options{Config: cfg, Store: store, Tags: resolver, Upstreams: clients})
	if err != nil {
		t.Fatal(err)
	}
	return testProxy{cfg, h, resolver, store}
}

func TestSyncExportImport(t *testing.T) {
	up := fakeregistry.New(t)
	up.PushIndex("team/multi", "v1", fakeregistry.RandomIndex(t, types.OCIImageIndex, v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}))
	img := up.PushRandom("team/app", "v1")
	want, _ := img.Digest()

	p := newProxy(t, up)
	list := mirror.ImageList{Images: []mirror.Entry{{Image: upstreamName + "/team/app:v1"}, {Image: upstreamName + "/team/multi:v1"}}}
	results, err := mirror.Sync(t.Context(), p.cfg, p.handler.InProcess(), p.tags, list, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Fatalf("sync %s: %v", r.Image, r.Err)
		}
	}
	pin, err := p.store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != want.String() {
		t.Fatalf("pin after sync = %+v, %v; want %s", pin, err, want)
	}
	up.ResetCounts()
	if _, err := mirror.Sync(t.Context(), p.cfg, p.handler.InProcess(), p.tags, list, io.Discard); err != nil {
		t.Fatal(err)
	}
	if n := up.Count("GET", "/blobs/"); n != 0 {
		t.Fatalf("a repeated sync fetched %d blobs again", n)
	}

	tarball := filepath.Join(t.TempDir(), "images.tar")
	if err := mirror.Export(t.Context(), p.cfg, p.handler.InProcess(), []string{upstreamName + "/team/app:v1", upstreamName + "/team/multi:v1"}, tarball, io.Discard); err != nil {
		t.Fatal(err)
	}

	off := newProxy(t, nil)
	n, err := mirror.Import(t.Context(), off.cfg, off.store, off.tags, tarball, io.Discard)
	if err != nil || n != 2 {
		t.Fatalf("Import = %d, %v", n, err)
	}
	pin, err = off.store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != want.String() {
		t.Fatalf("imported pin = %+v, %v; want %s", pin, err, want)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		b, err := off.store.OpenBlob(t.Context(), digest.Digest(d.String()), -1)
		if err != nil {
			t.Fatalf("layer %s not imported: %v", d, err)
		}
		b.Close()
	}
}

// TestImportRejectsTamperedBlob: a layout whose blob does not match its
// digest imports nothing for that image.
func TestImportRejectsTamperedBlob(t *testing.T) {
	up := fakeregistry.New(t)
	img := up.PushRandom("team/app", "v1")
	p := newProxy(t, up)
	dir := filepath.Join(t.TempDir(), "layout")
	if err := mirror.Export(t.Context(), p.cfg, p.handler.InProcess(), []string{upstreamName + "/team/app:v1"}, dir, io.Discard); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	blob := filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}

	off := newProxy(t, nil)
	_, err = mirror.Import(t.Context(), off.cfg, off.store, off.tags, dir, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("Import of a tampered layout = %v, want a digest mismatch", err)
	}
	if _, err := off.store.OpenBlob(t.Context(), digest.Digest(d.String()), -1); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("the tampered blob was committed (open: %v)", err)
	}
	if _, err := off.store.GetPin(t.Context(), upstreamName, "team/app", "v1"); err == nil {
		t.Fatal("the tag was pinned although its image did not import")
	}
}

// TestScheduledSyncFollowsTheUpstream: a scheduled run moves the pin of a
// listed tag that moved upstream and fetches the new image, and counts the run.
func TestScheduledSyncFollowsTheUpstream(t *testing.T) {
	up := fakeregistry.New(t)
	first, _ := up.PushRandom("team/app", "v1").Digest()
	p := newProxy(t, up)
	list := filepath.Join(t.TempDir(), "images.yaml")
	if err := os.WriteFile(list, []byte("images: ["+upstreamName+"/team/app:v1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cfg.Sync = config.Sync{ImagesFile: list, Interval: time.Hour}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go mirror.Schedule{Config: p.cfg, RegistryAPI: p.handler.InProcess(), Tags: p.tags,
		Logger: slog.New(slog.DiscardHandler), Registerer: reg}.Run(ctx)
	waitForRuns(t, reg, 1)
	pin, err := p.store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != first.String() {
		t.Fatalf("pin after the first run = %+v, %v; want %s", pin, err, first)
	}

	second := up.PushRandom("team/app", "v1")
	want, _ := second.Digest()
	cancel()
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	go mirror.Schedule{Config: p.cfg, RegistryAPI: p.handler.InProcess(), Tags: p.tags,
		Logger: slog.New(slog.DiscardHandler), Registerer: reg}.Run(ctx)
	waitForRuns(t, reg, 2)
	pin, err = p.store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != want.String() {
		t.Fatalf("pin after the tag moved = %+v, %v; want %s", pin, err, want)
	}
	layers, _ := second.Layers()
	d, _ := layers[0].Digest()
	b, err := p.store.OpenBlob(t.Context(), digest.Digest(d.String()), -1)
	if err != nil {
		t.Fatalf("the moved tag's layer was not fetched: %v", err)
	}
	b.Close()
}

// waitForRuns waits until the scheduled sync has counted n successful runs.
func waitForRuns(t *testing.T, reg *prometheus.Registry, n float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "pullbroker_sync_runs_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "failed" && m.GetCounter().GetValue() > 0 {
					t.Fatal("a scheduled sync run failed")
				}
				if m.GetLabel()[0].GetValue() == "ok" && m.GetCounter().GetValue() >= n {
					return
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %v successful scheduled sync runs within 20s", n)
}
