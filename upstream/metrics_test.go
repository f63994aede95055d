package upstream

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

func TestParseRateLimitRemaining(t *testing.T) {
	for in, want := range map[string]float64{"100;w=21600": 100, "0;w=21600": 0, " 7 ": 7} {
		if got, ok := parseRateLimitRemaining(in); !ok || got != want {
			t.Errorf("parse(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "abc;w=1", "-1;w=1"} {
		if _, ok := parseRateLimitRemaining(in); ok {
			t.Errorf("parse(%q) accepted", in)
		}
	}
}

// metricValue finds one sample of family name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (*dto.Metric, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			return m, true
		}
	}
	return nil, false
}

func TestMetrics(t *testing.T) {
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("library/app", "v1")
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("RateLimit-Remaining", "97;w=21600")
		}
		return false
	})
	c := newClient(t, f, Options{Registerer: reg})
	// A second client on the same Registerer shares the metric families.
	if _, err := New(upstreamConfig(f), Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadManifest(ctx, "library/app", "v1", nil); err != nil {
		t.Fatal(err)
	}

	if m, ok := metricValue(t, reg, "pullbroker_upstream_ratelimit_remaining", map[string]string{"upstream": "fake.example"}); !ok || m.GetGauge().GetValue() != 97 {
		t.Errorf("ratelimit gauge = %v, want 97", m)
	}
	if m, ok := metricValue(t, reg, "pullbroker_upstream_requests_total", map[string]string{"upstream": "fake.example", "method": "HEAD", "code": "200"}); !ok || m.GetCounter().GetValue() != 1 {
		t.Errorf("HEAD 200 counter = %v, want 1", m)
	}
	// The ping and the unauthenticated first try are counted as well.
	if m, ok := metricValue(t, reg, "pullbroker_upstream_requests_total", map[string]string{"method": "GET", "code": "401"}); !ok || m.GetCounter().GetValue() < 1 {
		t.Errorf("GET 401 counter = %v, want the ping counted", m)
	}
	if m, ok := metricValue(t, reg, "pullbroker_upstream_request_duration_seconds", map[string]string{"method": "HEAD"}); !ok || m.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("HEAD latency histogram = %v, want 1 sample", m)
	}
	if m, ok := metricValue(t, reg, "pullbroker_upstream_circuit_open", map[string]string{"upstream": "fake.example"}); !ok || m.GetGauge().GetValue() != 0 {
		t.Errorf("circuit gauge = %v, want 0", m)
	}

	families, _ := reg.Gather()
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "library") || strings.Contains(l.GetValue(), "v1") {
					t.Errorf("%s has a repository or tag in label %s=%q", fam.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}
