package mirror_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/mirror"
	"github.com/pullbroker/pullbroker/proxy"
	"github.com/pullbroker/pullbroker/upstream"
)

const upstreamName = "upstream.test"

// newProxy is a proxy over its own filesystem cache in front of up; up
// nil makes it an offline proxy.
func newProxy(t *testing.T, up *fakeregistry.Registry) (*config.Config, *proxy.Handler, *cache.Store) {
	t.Helper()
	u := config.Upstream{Name: upstreamName, Endpoint: "http://127.0.0.1:1", TagTTL: time.Minute,
		DialTimeout: time.Second, ResponseTimeout: 5 * time.Second}
	cfg := &config.Config{Mode: config.ModeOnline, Upstreams: []config.Upstream{u}}
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
	h, err := proxy.New(proxy.Options{Config: cfg, Store: store, Upstreams: map[string]*upstream.Client{upstreamName: client}})
	if err != nil {
		t.Fatal(err)
	}
	return cfg, h, store
}

func TestSyncExportImport(t *testing.T) {
	up := fakeregistry.New(t)
	up.PushIndex("team/multi", "v1", fakeregistry.RandomIndex(t, types.OCIImageIndex, v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}))
	img := up.PushRandom("team/app", "v1")
	want, _ := img.Digest()

	cfg, h, store := newProxy(t, up)
	list := mirror.ImageList{Images: []mirror.Entry{{Image: upstreamName + "/team/app:v1"}, {Image: upstreamName + "/team/multi:v1"}}}
	results, err := mirror.Sync(t.Context(), cfg, h, list, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			t.Fatalf("sync %s: %v", r.Image, r.Err)
		}
	}
	pin, err := store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != want.String() {
		t.Fatalf("pin after sync = %+v, %v; want %s", pin, err, want)
	}
	up.ResetCounts()
	if _, err := mirror.Sync(t.Context(), cfg, h, list, io.Discard); err != nil {
		t.Fatal(err)
	}
	if n := up.Count("GET", "/blobs/"); n != 0 {
		t.Fatalf("a repeated sync fetched %d blobs again", n)
	}

	tarball := filepath.Join(t.TempDir(), "images.tar")
	if err := mirror.Export(t.Context(), cfg, h, []string{upstreamName + "/team/app:v1", upstreamName + "/team/multi:v1"}, tarball, io.Discard); err != nil {
		t.Fatal(err)
	}

	offCfg, _, offStore := newProxy(t, nil)
	n, err := mirror.Import(t.Context(), offCfg, offStore, tarball, io.Discard)
	if err != nil || n != 2 {
		t.Fatalf("Import = %d, %v", n, err)
	}
	pin, err = offStore.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Digest.String() != want.String() {
		t.Fatalf("imported pin = %+v, %v; want %s", pin, err, want)
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		b, err := offStore.OpenBlob(t.Context(), digest.Digest(d.String()), -1)
		if err != nil {
			t.Fatalf("layer %s not imported: %v", d, err)
		}
		b.Content.Close()
	}
}

// TestImportRejectsTamperedBlob: a layout whose blob does not match its
// digest imports nothing for that image.
func TestImportRejectsTamperedBlob(t *testing.T) {
	up := fakeregistry.New(t)
	img := up.PushRandom("team/app", "v1")
	cfg, h, _ := newProxy(t, up)
	dir := filepath.Join(t.TempDir(), "layout")
	if err := mirror.Export(t.Context(), cfg, h, []string{upstreamName + "/team/app:v1"}, dir, io.Discard); err != nil {
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

	offCfg, _, offStore := newProxy(t, nil)
	_, err = mirror.Import(t.Context(), offCfg, offStore, dir, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Fatalf("Import of a tampered layout = %v, want a digest mismatch", err)
	}
	if _, err := offStore.OpenBlob(t.Context(), digest.Digest(d.String()), -1); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("the tampered blob was committed (open: %v)", err)
	}
	if _, err := offStore.GetPin(t.Context(), upstreamName, "team/app", "v1"); err == nil {
		t.Fatal("the tag was pinned although its image did not import")
	}
}
