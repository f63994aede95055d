package proxy

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
	"github.com/pullbroker/pullbroker/tags"
)

type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	cacheRequests *prometheus.CounterVec
	servedBytes   *prometheus.CounterVec
	// clientAuthFailures has no user or address label: those are
	// unbounded and the user names are the attacker's to choose.
	clientAuthFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_http_requests_total",
			Help: "Client requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullbroker_http_request_duration_seconds",
			Help:    "Time to answer a client request, body included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route", "method"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_cache_requests_total",
			Help: "Cache lookups by kind (manifest, blob, tag, referrers), upstream and result (hit, miss, revalidated, stale, pinned).",
		}, []string{"kind", "upstream", "result"}),
		servedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_served_bytes_total",
			Help: "Blob bytes sent to clients by source (cache, upstream).",
		}, []string{"source"}),
		clientAuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_client_auth_failures_total",
			Help: "Client logins refused, by reason: invalid (unknown user, wrong password or token), throttled (too many failures from the source address, answered 429).",
		}, []string{"reason"}),
	}
	m.requests = metricsreg.Shared(reg, m.requests)
	m.duration = metricsreg.Shared(reg, m.duration)
	m.cacheRequests = metricsreg.Shared(reg, m.cacheRequests)
	m.servedBytes = metricsreg.Shared(reg, m.servedBytes)
	m.clientAuthFailures = metricsreg.Shared(reg, m.clientAuthFailures)
	m.clientAuthFailures.WithLabelValues("invalid")
	m.clientAuthFailures.WithLabelValues("throttled")
	return m
}

func (m *metrics) observeRequest(route, method string, code int, d time.Duration) {
	if method != "GET" && method != "HEAD" {
		method = "other"
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}

// cacheResult counts one lookup and records it for the request log.
func (h *Handler) cacheResult(info *requestInfo, kind, upstream string, result tags.Outcome) {
	info.outcome = string(result)
	h.metrics.cacheRequests.WithLabelValues(kind, upstream, string(result)).Inc()
}
