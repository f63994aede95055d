package cache

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

type metrics struct {
	fillsInFlight prometheus.Gauge
	fillClients   prometheus.Gauge
	sizeBytes     prometheus.Gauge
	objects       prometheus.Gauge
	evictions     prometheus.Counter
	evictedBytes  prometheus.Counter
	pins          *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		fillsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_fills_in_flight",
			Help: "Blob fetches from upstreams currently running.",
		}),
		fillClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_fill_clients",
			Help: "Client responses currently following a running fill.",
		}),
		sizeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_cache_size_bytes",
			Help: "Bytes of blobs and manifests in the cache storage: measured at start in the background, then kept by this process's commits and evictions.",
		}),
		objects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_cache_objects",
			Help: "Blobs and manifests in the cache storage, counted like pullbroker_cache_size_bytes.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_evictions_total",
			Help: "Blobs deleted from the cache to keep it under storage.maxSizeBytes.",
		}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_evicted_bytes_total",
			Help: "Bytes of the blobs deleted from the cache to keep it under storage.maxSizeBytes.",
		}),
		pins: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullbroker_pins",
			Help: "Tags pinned to a digest in storage, by the policy that pinned them (sticky, manual).",
		}, []string{"policy"}),
	}
	m.fillsInFlight = metricsreg.Shared(reg, m.fillsInFlight)
	m.fillClients = metricsreg.Shared(reg, m.fillClients)
	m.sizeBytes = metricsreg.Shared(reg, m.sizeBytes)
	m.objects = metricsreg.Shared(reg, m.objects)
	m.evictions = metricsreg.Shared(reg, m.evictions)
	m.evictedBytes = metricsreg.Shared(reg, m.evictedBytes)
	m.pins = metricsreg.Shared(reg, m.pins)
	// Zero series from the start, so that dashboards show 0 and not "no data".
	m.pins.WithLabelValues("sticky")
	m.pins.WithLabelValues("manual")
	return m
}
