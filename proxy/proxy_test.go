package proxy_test

// Shared set-up of the integration tests (*_integration_test.go): a fake
// upstream (internal/fakeregistry) behind an upstream.Client, a cache over a
// real storage driver, and the proxy's Handler on an httptest server, all
// on 127.0.0.1, with a clock the tests move.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/proxy"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

// upstreamName is the fake upstream's name: the first path component in the
// prefix form, the ?ns= value in the mirror form, and the default upstream.
const upstreamName = "upstream.test"

// tagTTL is the fake upstream's tag TTL.
const tagTTL = 5 * time.Minute

// drivers are the storage drivers the cache is tested over: inmemory goes
// through the driver interface for everything, filesystem serves local
// files and commits fills by rename.
var drivers = []string{"inmemory", "filesystem"}

// forEachDriver runs fn as a subtest per storage driver.
func forEachDriver(t *testing.T, fn func(t *testing.T, driver string)) {
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) { fn(t, d) })
	}
}

// forEachSetup runs fn as a subtest per storage driver with an anonymous
// upstream, and once more over the filesystem driver with a Bearer upstream
// that redirects blob GETs to its CDN (viaCDN).
func forEachSetup(t *testing.T, fn func(t *testing.T, e *env, viaCDN bool)) {
	forEachDriver(t, func(t *testing.T, driver string) { fn(t, newEnv(t, driver), false) })
	t.Run("filesystem bearer CDN", func(t *testing.T) {
		fn(t, newEnv(t, "filesystem", fakeregistry.WithBearer("puller", "s3cret"), fakeregistry.WithCDN()), true)
	})
}

// fakeClock is tags.Options.Now and proxy.Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is one proxy in front of one fake upstream.
type env struct {
	t       *testing.T
	up      *fakeregistry.Registry
	srv     *httptest.Server
	handler *proxy.Handler
	tags    *tags.Resolver
	store   *cache.Store
	clock   *fakeClock
	metrics *prometheus.Registry
	// logs holds the handler's log lines, as JSON.
	logs *testenv.SyncBuffer
	// inflight counts client requests the handler is answering.
	inflight atomic.Int64
}

// newEnv starts a fake upstream with upOpts and a proxy with a cache over
// driver, wired as cmd/pullbroker's build() wires them.
func newEnv(t *testing.T, driver string, upOpts ...fakeregistry.Option) *env {
	t.Helper()
	return newEnvWithConfig(t, driver, nil, upOpts...)
}

// newEnvWithConfig is newEnv with a chance to change the proxy's config
// (pin rules, access, modes) before the handler is built.
func newEnvWithConfig(t *testing.T, driver string, configure func(*config.Config), upOpts ...fakeregistry.Option) *env {
	t.Helper()
	e := &env{
		t:       t,
		up:      fakeregistry.New(t, upOpts...),
		clock:   &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		metrics: prometheus.NewRegistry(),
		logs:    &testenv.SyncBuffer{},
	}
	storage := config.Storage{Driver: driver, SpoolDir: t.TempDir()}
	if driver == "filesystem" {
		storage.Parameters = map[string]any{"rootdirectory": t.TempDir()}
	}
	u := config.Upstream{
		Name:            upstreamName,
		Endpoint:        e.up.URL(),
		TagTTL:          tagTTL,
		DialTimeout:     time.Second,
		ResponseTimeout: 5 * time.Second,
		// The fake's blob storage (WithCDN) is on 127.0.0.2.
		AllowPrivateRedirects: true,
	}
	cfg := &config.Config{
		Mode:            config.ModeOnline,
		DefaultUpstream: upstreamName,
		Upstreams:       []config.Upstream{u},
		Storage:         storage,
	}
	if configure != nil {
		configure(cfg)
	}
	drv, localRoot, err := cache.OpenDriver(t.Context(), cfg.Storage)
	if err != nil {
		t.Fatal(err)
	}
	e.store, err = cache.New(drv, cache.Options{Registerer: e.metrics, LocalRoot: localRoot, SpoolDir: cfg.Storage.SpoolDir,
		FillTimeout: cfg.Storage.Fills.Timeout, FillStallTimeout: cfg.Storage.Fills.StallTimeout, MaxConcurrentFills: cfg.Storage.Fills.MaxConcurrent})
	if err != nil {
		t.Fatal(err)
	}
	// A fill commits after its clients got the last byte: let it finish
	// before the temporary directories go.
	t.Cleanup(func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if e.gauge("pullbroker_fills_in_flight") == 0 {
				return
			}
		}
	})
	e.serve(cfg)
	return e
}

// serve builds the upstream client, the tag resolver and the handler from
// cfg, as cmd/pullbroker's build() wires them, and serves the handler.
func (e *env) serve(cfg *config.Config) {
	t := e.t
	u := cfg.Upstreams[0]
	client, err := upstream.New(u, upstream.Options{
		Authenticator: e.up.Authenticator(), Registerer: e.metrics,
		Offline: cfg.EffectiveMode(u) == config.ModeOffline,
	})
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*upstream.Client{upstreamName: client}
	e.tags, err = tags.New(tags.Options{Config: cfg, Store: e.store, Upstreams: clients, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.handler, err = proxy.New(proxy.Options{
		Config:     cfg,
		Store:      e.store,
		Tags:       e.tags,
		Upstreams:  clients,
		Logger:     slog.New(slog.NewJSONHandler(e.logs, nil)),
		Registerer: e.metrics,
		Now:        e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.inflight.Add(1)
		defer e.inflight.Add(-1)
		e.handler.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
}

// restarted is a second proxy over the same cache and upstream, built from
// a changed copy of cfg, as a restart with a new config would give.
func (e *env) restarted(cfg *config.Config, change func(*config.Config)) *env {
	changed := *cfg
	change(&changed)
	r := &env{t: e.t, up: e.up, store: e.store, clock: e.clock, metrics: prometheus.NewRegistry(), logs: &testenv.SyncBuffer{}}
	r.serve(&changed)
	return r
}

// host is the proxy's "127.0.0.1:PORT", as image references name it.
func (e *env) host() string { return strings.TrimPrefix(e.srv.URL, "http://") }

// response is an answer of the proxy, its body read to the end (or to the
// error that ended it).
type response struct {
	*http.Response
	body    []byte
	readErr error
}

// do sends a request to the proxy; header holds name, value pairs.
func (e *env) do(method, path string, header ...string) response {
	e.t.Helper()
	return doRequest(e.t, e.t.Context(), method, e.srv.URL+path, header...)
}

func doRequest(t *testing.T, ctx context.Context, method, url string, header ...string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(resp.Body)
	return response{Response: resp, body: body, readErr: readErr}
}

// ociError returns the first error code of an OCI error body.
func ociError(t *testing.T, r response) string {
	t.Helper()
	code, _, err := fakeregistry.ParseError(r.body)
	if err != nil {
		t.Fatalf("status %d: body %.200q: %v", r.StatusCode, r.body, err)
	}
	return code
}

// wantError checks the status and the OCI error code of an answer.
func wantError(t *testing.T, what string, r response, status int, code string) {
	t.Helper()
	if r.StatusCode != status {
		t.Errorf("%s: status %d, want %d (body %.200q)", what, r.StatusCode, status, r.body)
		return
	}
	if got := ociError(t, r); got != code {
		t.Errorf("%s: OCI error code %s, want %s", what, got, code)
	}
}

// randomBytes returns n random bytes.
func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// blobImage is a Docker image whose layers hold exactly the given bytes,
// so tests know what every blob must contain.
func blobImage(t *testing.T, layers ...[]byte) v1.Image {
	t.Helper()
	img := empty.Image
	for _, b := range layers {
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.DockerLayer)); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// manifestOf returns an image's or index's raw manifest, digest and media
// type.
func manifestOf(t *testing.T, m interface {
	RawManifest() ([]byte, error)
	MediaType() (types.MediaType, error)
}) (raw []byte, dgst digest.Digest, mediaType string) {
	t.Helper()
	raw, err := m.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := m.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	return raw, digest.FromBytes(raw), string(mt)
}

// blobsOf returns the digests of an image's config and layers.
func blobsOf(t *testing.T, img v1.Image) []digest.Digest {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out := []digest.Digest{digest.Digest(cfg.String())}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, digest.Digest(d.String()))
	}
	return out
}

// gauge reads a gauge from the proxy's metrics.
func (e *env) gauge(name string) float64 {
	e.t.Helper()
	families, err := e.metrics.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	e.t.Fatalf("no gauge %s", name)
	return 0
}

// committed reports whether the cache holds the blob d.
func committed(t *testing.T, s *cache.Store, d digest.Digest) bool {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), d, -1)
	if errors.Is(err, cache.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return true
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sameBytes reports a mismatch without dumping megabytes.
func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d bytes (digest %s), want %d bytes (digest %s)",
			what, len(got), digest.FromBytes(got), len(want), digest.FromBytes(want))
	}
}
