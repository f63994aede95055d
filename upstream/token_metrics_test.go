package upstream

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

func TestTokenRefreshesCountTokenEndpointRequests(t *testing.T) {
	ctx := testContext(t)
	reg := prometheus.NewRegistry()
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("library/app", "v1")
	f.PushRandom("library/other", "v1")
	c := newClient(t, f, Options{Registerer: reg})

	tokens := func() float64 {
		m, ok := metricValue(t, reg, "pullbroker_token_refreshes_total", map[string]string{"upstream": "fake.example"})
		if !ok {
			return 0
		}
		return m.GetCounter().GetValue()
	}
	for range 3 {
		if _, err := c.HeadManifest(ctx, "library/app", "v1", nil); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := tokens(), float64(f.Count("GET", "/token")); got != want || got < 1 {
		t.Fatalf("token refreshes = %v, fake's token endpoint saw %v", got, want)
	}
	before := tokens()
	if _, err := c.HeadManifest(ctx, "library/other", "v1", nil); err != nil {
		t.Fatal(err)
	}
	if got := tokens(); got != before+1 {
		t.Fatalf("token refreshes after a second repository = %v, want %v", got, before+1)
	}

	// Basic-only and anonymous upstreams have no token endpoint.
	basic := fakeregistry.New(t, withBasic)
	basic.PushRandom("library/app", "v1")
	reg2 := prometheus.NewRegistry()
	bc := newClient(t, basic, Options{Registerer: reg2})
	if _, err := bc.HeadManifest(ctx, "library/app", "v1", nil); err != nil {
		t.Fatal(err)
	}
	if m, ok := metricValue(t, reg2, "pullbroker_token_refreshes_total", nil); ok && m.GetCounter().GetValue() != 0 {
		t.Fatalf("token refreshes against a Basic upstream = %v, want 0", m.GetCounter().GetValue())
	}
}

func TestBearerRealm(t *testing.T) {
	for in, want := range map[string]string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`: "https://auth.docker.io/token",
		`bearer service="x", realm="http://localhost:1/token"`:                     "http://localhost:1/token",
		`Basic realm="x"`: "",
	} {
		got := ""
		if m := bearerRealm.FindStringSubmatch(in); m != nil {
			got = m[1]
		}
		if got != want {
			t.Errorf("realm of %q = %q, want %q", in, got, want)
		}
	}
}
