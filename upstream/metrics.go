package upstream

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

// metrics are shared by every Client registered on the same Registerer and
// curried with the upstream name. Labels stay bounded: upstream names come
// from the configuration, methods and status codes from HTTP. Repositories
// and tags never become labels.
type metrics struct {
	requests       *prometheus.CounterVec   // upstream, method, code
	duration       *prometheus.HistogramVec // upstream, method
	rateRemaining  *prometheus.GaugeVec     // upstream
	circuitOpen    *prometheus.GaugeVec     // upstream
	circuitOpens   *prometheus.CounterVec   // upstream
	transportSetup *prometheus.CounterVec   // upstream, result
	tokenRequests  *prometheus.CounterVec   // upstream
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_upstream_requests_total",
			Help: "HTTP requests sent to upstream registries, their token servers and blob storage, by status code (\"error\" when no response arrived).",
		}, []string{"upstream", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullbroker_upstream_request_duration_seconds",
			Help:    "Time from sending an upstream request to its response headers (blob bodies are not included).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"upstream", "method"}),
		rateRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullbroker_upstream_ratelimit_remaining",
			Help: "Pulls left in the current window as last reported by the upstream's ratelimit-remaining header (Docker Hub).",
		}, []string{"upstream"}),
		circuitOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullbroker_upstream_circuit_open",
			Help: "1 while the upstream's circuit breaker refuses calls (open or waiting for its half-open probe), else 0.",
		}, []string{"upstream"}),
		circuitOpens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_upstream_circuit_opens_total",
			Help: "Times the upstream's circuit breaker opened.",
		}, []string{"upstream"}),
		transportSetup: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_upstream_transport_setups_total",
			Help: "Authenticated transports set up (registry ping and token fetch) per repository scope, by result.",
		}, []string{"upstream", "result"}),
		tokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_token_refreshes_total",
			Help: "Requests sent to the upstream's Bearer token endpoint (the realm of its WWW-Authenticate challenge): first tokens and refreshes, whatever the outcome.",
		}, []string{"upstream"}),
	}
	m.requests = metricsreg.Shared(reg, m.requests)
	m.duration = metricsreg.Shared(reg, m.duration)
	m.rateRemaining = metricsreg.Shared(reg, m.rateRemaining)
	m.circuitOpen = metricsreg.Shared(reg, m.circuitOpen)
	m.circuitOpens = metricsreg.Shared(reg, m.circuitOpens)
	m.transportSetup = metricsreg.Shared(reg, m.transportSetup)
	m.tokenRequests = metricsreg.Shared(reg, m.tokenRequests)
	return m
}

// instrumentedTransport counts and times every round trip of one upstream
// and reads its rate-limit header. It sits below ggcr's transports, so pings,
// token requests and redirected blob fetches are measured too.
//
// ggcr does the token exchange itself, so token requests are recognised
// here by their URL: the realm of a Bearer challenge this upstream sent.
type instrumentedTransport struct {
	inner         http.RoundTripper
	requests      *prometheus.CounterVec
	duration      prometheus.ObserverVec
	rateRemaining prometheus.Gauge
	tokenRequests prometheus.Counter

	mu     sync.Mutex
	realms map[string]struct{} // scheme://host/path of each realm seen
}

// maxRealms bounds the realms remembered per upstream; a registry has one,
// a blob CDN that challenges on its own may add another.
const maxRealms = 8

func (m *metrics) instrument(upstream string, inner http.RoundTripper) *instrumentedTransport {
	labels := prometheus.Labels{"upstream": upstream}
	return &instrumentedTransport{
		inner:         inner,
		requests:      m.requests.MustCurryWith(labels),
		duration:      m.duration.MustCurryWith(labels),
		rateRemaining: m.rateRemaining.With(labels),
		tokenRequests: m.tokenRequests.With(labels),
		realms:        map[string]struct{}{},
	}
}

func (t *instrumentedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.isTokenRequest(req.URL) {
		t.tokenRequests.Inc()
	}
	start := time.Now()
	resp, err := t.inner.RoundTrip(req)
	t.duration.WithLabelValues(req.Method).Observe(time.Since(start).Seconds())
	if err != nil {
		t.requests.WithLabelValues(req.Method, "error").Inc()
		// Every failure of the base transport means no response arrived.
		return resp, &unreachableError{err: err}
	}
	t.requests.WithLabelValues(req.Method, strconv.Itoa(resp.StatusCode)).Inc()
	if remaining, ok := parseRateLimitRemaining(resp.Header.Get("Ratelimit-Remaining")); ok {
		t.rateRemaining.Set(remaining)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		t.learnRealms(bearerRealms(resp.Header))
	}
	return resp, nil
}

func endpointKey(u *url.URL) string { return u.Scheme + "://" + u.Host + u.Path }

func (t *instrumentedTransport) isTokenRequest(u *url.URL) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.realms[endpointKey(u)]
	return ok
}

func (t *instrumentedTransport) learnRealms(realms []string) {
	for _, realm := range realms {
		u, err := url.Parse(realm)
		if err != nil || u.Host == "" {
			continue
		}
		t.mu.Lock()
		if len(t.realms) < maxRealms {
			t.realms[endpointKey(u)] = struct{}{}
		}
		t.mu.Unlock()
	}
}

// parseRateLimitRemaining reads Docker Hub's "ratelimit-remaining: 100;w=21600"
// (pulls left; window in seconds after the semicolon).
func parseRateLimitRemaining(v string) (float64, bool) {
	if v == "" {
		return 0, false
	}
	count, _, _ := strings.Cut(v, ";")
	n, err := strconv.ParseInt(strings.TrimSpace(count), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return float64(n), true
}
