package auth

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

// Metric names. The only label is the upstream name from the config, so the
// series are bounded by the number of configured upstreams.
const (
	metricErrors  = "pullbroker_credential_errors_total"
	metricHealthy = "pullbroker_credential_source_healthy"
	metricReloads = "pullbroker_credential_reloads_total"
)

type metrics struct {
	errors  *prometheus.CounterVec
	healthy *prometheus.GaugeVec
	reloads *prometheus.CounterVec
}

// newMetrics registers the credential metrics on reg (which may be nil),
// reusing the collectors already there when another Source registered them.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricErrors,
			Help: "Attempts to load, rotate or refresh an upstream credential that failed (the last good credential stays in use).",
		}, []string{"upstream"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricHealthy,
			Help: "1 when the last attempt to load, rotate or refresh the upstream credential succeeded, else 0.",
		}, []string{"upstream"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricReloads,
			Help: "New upstream credentials taken into use: first load, rotation of a file or Secret, token refresh (GCP OAuth2, ECR).",
		}, []string{"upstream"}),
	}
	m.errors = metricsreg.Shared(reg, m.errors)
	m.healthy = metricsreg.Shared(reg, m.healthy)
	m.reloads = metricsreg.Shared(reg, m.reloads)
	return m
}

type upstreamMetrics struct {
	errors  prometheus.Counter
	healthy prometheus.Gauge
	reloads prometheus.Counter
}

func (m *metrics) forUpstream(name string) *upstreamMetrics {
	return &upstreamMetrics{
		errors:  m.errors.WithLabelValues(name),
		healthy: m.healthy.WithLabelValues(name),
		reloads: m.reloads.WithLabelValues(name),
	}
}
