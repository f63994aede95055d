package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

// Metrics count what the webhook does. Register them with NewMetrics.
type Metrics struct {
	admissions      *prometheus.CounterVec
	duration        prometheus.Histogram
	imagesRewritten prometheus.Counter
	resolveFailures prometheus.Counter
}

// NewMetrics creates the webhook's metrics and registers them on reg
// (which may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_webhook_admissions_total",
			Help: "Admission requests by result: rewritten, unchanged, skipped (a skip rule), ignored (not a Pod create or ephemeral container update), undecodable.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pullbroker_webhook_admission_duration_seconds",
			Help:    "Time to answer an admission request, tag resolution included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}),
		imagesRewritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_webhook_images_rewritten_total",
			Help: "Container images rewritten to the proxy.",
		}),
		resolveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_webhook_resolve_failures_total",
			Help: "Tags that could not be pinned to a digest; the image was rewritten with its tag only.",
		}),
	}
	m.admissions = metricsreg.Shared(reg, m.admissions)
	m.duration = metricsreg.Shared(reg, m.duration)
	m.imagesRewritten = metricsreg.Shared(reg, m.imagesRewritten)
	m.resolveFailures = metricsreg.Shared(reg, m.resolveFailures)
	return m
}

func (m *Metrics) observe(result string, d time.Duration) {
	m.admissions.WithLabelValues(result).Inc()
	m.duration.Observe(d.Seconds())
}
