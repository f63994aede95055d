package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

// Names that must never show up in a metric label: they are what a
// client pulls.
const (
	testRepo     = "team/secret-repo-x7"
	testTag      = "tag-q9z"
	testPinnedTg = "pinned-k3w"
	upstreamUser = "puller"
	upstreamPass = "upstream-pass-5t8"
)

type wiredApp struct {
	app      *app
	registry *httptest.Server
	admin    *httptest.Server
	log      *testenv.SyncBuffer
	upstream *fakeregistry.Registry
}

// startWired builds pullbroker exactly as serve does, over in-memory
// storage and one fake upstream that wants a Bearer token.
func startWired(t *testing.T) *wiredApp {
	t.Helper()
	up := fakeregistry.New(t, fakeregistry.WithBearer(upstreamUser, upstreamPass))
	up.PushRandom(testRepo, testTag)
	up.PushRandom(testRepo, testPinnedTg)
	up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("RateLimit-Remaining", "99;w=21600")
		}
		return false
	})

	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
listen: {addr: "127.0.0.1:0"}
admin: {addr: "127.0.0.1:0"}
storage:
  driver: inmemory
  parameters: {}
  spoolDir: %q
log: {format: json, level: info}
disableDefaultUpstreams: true
defaultUpstream: ""
upstreams:
  - name: upstream.test
    endpoint: %s
    credentials:
      basic: {username: %s, password: %s}
pins:
  - registry: upstream.test
    repository: "**"
    tag: "pinned-*"
    policy: sticky
`, t.TempDir(), up.URL(), upstreamUser, upstreamPass)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	a, err := build(t.Context(), cfg, newLogger(cfg.Log, logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	a.store.Start(t.Context())
	leading, stopLeading := context.WithCancel(t.Context())
	led := make(chan struct{})
	go func() {
		defer close(led)
		a.store.Lead(leading)
	}()
	t.Cleanup(func() { // before the storage directory is removed
		stopLeading()
		<-led
	})
	admin, err := adminMux(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &wiredApp{
		app:      a,
		registry: httptest.NewServer(a.handler),
		admin:    httptest.NewServer(admin),
		log:      logs,
		upstream: up,
	}
	t.Cleanup(w.registry.Close)
	t.Cleanup(w.admin.Close)
	return w
}

// pull fetches an image through the proxy, every layer included.
func (w *wiredApp) pull(t *testing.T, tag string) {
	t.Helper()
	host := strings.TrimPrefix(w.registry.URL, "http://")
	ref, err := name.ParseReference(host+"/upstream.test/"+testRepo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
}

func (w *wiredApp) get(t *testing.T, url string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// pullSome pulls two images twice each, one of them pinned on the way.
func (w *wiredApp) pullSome(t *testing.T) {
	t.Helper()
	w.pull(t, testTag)
	w.pull(t, testTag)      // from the cache
	w.pull(t, testPinnedTg) // pinned (sticky) on first resolution
	w.pull(t, testPinnedTg)
}

func TestMetricsPassLint(t *testing.T) {
	w := startWired(t)
	w.pullSome(t)
	problems, err := testutil.GatherAndLint(w.app.registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestMetricsAfterPulls(t *testing.T) {
	w := startWired(t)
	w.pullSome(t)

	code, body := w.get(t, w.admin.URL+"/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	// The families of issue 6, each with at least one series.
	for _, want := range []string{
		"pullbroker_http_requests_total", "pullbroker_http_request_duration_seconds",
		"pullbroker_cache_requests_total", "pullbroker_served_bytes_total",
		"pullbroker_upstream_requests_total", "pullbroker_upstream_request_duration_seconds",
		"pullbroker_fills_in_flight", "pullbroker_fill_clients",
		"pullbroker_upstream_ratelimit_remaining", "pullbroker_token_refreshes_total",
		"pullbroker_credential_errors_total", "pullbroker_pins",
		"pullbroker_cache_size_bytes", "pullbroker_cache_objects", "pullbroker_evictions_total",
	} {
		if f, ok := families[want]; !ok || len(f.GetMetric()) == 0 {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	value := func(fam string, labels map[string]string) float64 {
		var sum float64
	next:
		for _, m := range families[fam].GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return sum
	}
	if v := value("pullbroker_pins", map[string]string{"policy": "sticky"}); v != 1 {
		t.Errorf("sticky pins = %v, want 1", v)
	}
	if v := value("pullbroker_token_refreshes_total", map[string]string{"upstream": "upstream.test"}); v < 1 {
		t.Errorf("token refreshes = %v, want at least 1", v)
	}
	if v := value("pullbroker_cache_objects", nil); v < 4 {
		t.Errorf("cached objects = %v, want the two images' manifests, configs and layers", v)
	}
	if v := value("pullbroker_cache_requests_total", map[string]string{"kind": "tag", "result": "pinned"}); v < 1 {
		t.Errorf("pinned tag answers = %v, want at least 1", v)
	}
	if v := value("pullbroker_upstream_ratelimit_remaining", nil); v != 99 {
		t.Errorf("ratelimit remaining = %v, want 99", v)
	}

	// No label value names what was pulled.
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				v := l.GetValue()
				for _, bad := range []string{"secret-repo", "team/", testTag, testPinnedTg, "sha256:", upstreamPass} {
					if strings.Contains(v, bad) {
						t.Errorf("%s{%s=%q} names a repository, tag, digest or secret", f.GetName(), l.GetName(), v)
					}
				}
			}
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	w := startWired(t)
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := w.get(t, w.admin.URL+p, nil); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%s = %d %q", p, code, body)
		}
	}
	// Readiness does not depend on the upstream.
	w.upstream.Close()
	if code, _ := w.get(t, w.admin.URL+"/readyz", nil); code != http.StatusOK {
		t.Errorf("/readyz with the upstream down = %d, want 200", code)
	}
	w.app.draining.Store(true)
	if code, _ := w.get(t, w.admin.URL+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d, want 503", code)
	}
	if code, _ := w.get(t, w.admin.URL+"/healthz", nil); code != http.StatusOK {
		t.Errorf("/healthz while draining = %d, want 200", code)
	}
}

func TestRequestLogLines(t *testing.T) {
	w := startWired(t)
	w.pull(t, testTag)
	secretHeader := http.Header{
		"Authorization": {"Bearer client-token-2j4"},
		"X-Request-Id":  {"req-abc-123"},
	}
	manifestURL := w.registry.URL + "/v2/upstream.test/" + testRepo + "/manifests/" + testTag + "?token=query-secret-8h1"
	if code, _ := w.get(t, manifestURL, secretHeader); code != http.StatusOK {
		t.Fatalf("manifest GET = %d", code)
	}
	// The mirror form, with a query string.
	mirrorURL := w.registry.URL + "/v2/" + testRepo + "/manifests/" + testTag + "?ns=upstream.test&access_token=query-secret-8h1"
	w.get(t, mirrorURL, nil)

	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(w.log.String(), "req-abc-123") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	logs := w.log.String()
	for _, secret := range []string{"client-token-2j4", "query-secret-8h1", upstreamPass, "Authorization", "access_token"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains %q:\n%s", secret, logs)
		}
	}
	var found bool
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		if line["msg"] != "request" || line["id"] != "req-abc-123" {
			continue
		}
		found = true
		for _, k := range []string{"method", "path", "status", "upstream", "cache", "duration"} {
			if _, ok := line[k]; !ok {
				t.Errorf("request line lacks %q: %s", k, sc.Text())
			}
		}
		if line["upstream"] != "upstream.test" || line["cache"] != "hit" || line["status"] != float64(200) {
			t.Errorf("request line: %s", sc.Text())
		}
	}
	if !found {
		t.Fatalf("no request line with the client's request ID:\n%s", logs)
	}
}
