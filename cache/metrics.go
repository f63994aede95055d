package cache

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

type metrics struct {
	fillsInFlight  prometheus.Gauge
	fillClients    prometheus.Gauge
	sizeBytes      prometheus.Gauge
	objects        prometheus.Gauge
	evictions      *prometheus.CounterVec
	evictedBytes   *prometheus.CounterVec
	gcRuns         *prometheus.CounterVec
	gcDuration     prometheus.Histogram
	pins           *prometheus.GaugeVec
	fillsRefused   *prometheus.CounterVec
	streams        prometheus.Counter
	uploadsRemoved *prometheus.CounterVec
	corruptRemoved *prometheus.CounterVec
	scrubbedBytes  prometheus.Counter
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
			Help: "Bytes of blobs and manifests in the cache storage, all replicas' together: the leader's index (a walk of storage, then every replica's journal), or on other replicas what the leader last published to cluster/usage.",
		}),
		objects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_cache_objects",
			Help: "Blobs and manifests in the cache storage, counted like pullbroker_cache_size_bytes.",
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_evictions_total",
			Help: "Blobs deleted from the cache, by reason: size (to keep it under storage.maxSizeBytes), gc (referenced by no tag record, pin or lock file).",
		}, []string{"reason"}),
		evictedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_evicted_bytes_total",
			Help: "Bytes of the blobs deleted from the cache, by reason, as pullbroker_evictions_total counts them.",
		}, []string{"reason"}),
		gcRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_gc_runs_total",
			Help: "Garbage collection runs (pullbroker gc, dry runs included), by result: ok, failed (nothing was removed after a failure to mark).",
		}, []string{"result"}),
		gcDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pullbroker_gc_duration_seconds",
			Help:    "Duration of garbage collection runs, from the listing of blobs to the last removal.",
			Buckets: prometheus.ExponentialBuckets(0.1, 4, 8), // 0.1 s to about 27 min
		}),
		pins: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pullbroker_pins",
			Help: "Tags pinned to a digest in storage, by the policy that pinned them (sticky, manual).",
		}, []string{"policy"}),
	}
	m.fillsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullbroker_fills_refused_total",
		Help: "Blob fills not started: concurrency (storage.fills.maxConcurrent reached; the client got 503), storage (no room to store the blob; it was streamed uncached).",
	}, []string{"reason"})
	m.streams = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pullbroker_uncached_streams_total",
		Help: "Blobs passed from an upstream to a client verified but not stored, because storage could not take them.",
	})
	m.uploadsRemoved = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullbroker_uploads_removed_total",
		Help: "Temporary files removed from uploads/: failed (a failed fill's spool), stale (left by a crash; removed at start).",
	}, []string{"reason"})
	m.corruptRemoved = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pullbroker_corrupt_blobs_removed_total",
		Help: "Cached blobs found corrupt and removed (they are fetched again when next pulled): size (found on open), scrub (re-hashed by the scrub or pullbroker verify).",
	}, []string{"check"})
	m.scrubbedBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pullbroker_scrubbed_bytes_total",
		Help: "Bytes of cached blobs re-hashed by the scrub.",
	})
	m.fillsInFlight = metricsreg.Shared(reg, m.fillsInFlight)
	m.fillClients = metricsreg.Shared(reg, m.fillClients)
	m.sizeBytes = metricsreg.Shared(reg, m.sizeBytes)
	m.objects = metricsreg.Shared(reg, m.objects)
	m.evictions = metricsreg.Shared(reg, m.evictions)
	m.evictedBytes = metricsreg.Shared(reg, m.evictedBytes)
	m.gcRuns = metricsreg.Shared(reg, m.gcRuns)
	m.gcDuration = metricsreg.Shared(reg, m.gcDuration)
	m.pins = metricsreg.Shared(reg, m.pins)
	m.fillsRefused = metricsreg.Shared(reg, m.fillsRefused)
	m.streams = metricsreg.Shared(reg, m.streams)
	m.uploadsRemoved = metricsreg.Shared(reg, m.uploadsRemoved)
	m.corruptRemoved = metricsreg.Shared(reg, m.corruptRemoved)
	m.scrubbedBytes = metricsreg.Shared(reg, m.scrubbedBytes)
	// Zero series from the start, so that dashboards show 0 and not "no data".
	m.pins.WithLabelValues(config.PolicySticky)
	m.pins.WithLabelValues(config.PolicyManual)
	for _, r := range []string{"concurrency", "storage"} {
		m.fillsRefused.WithLabelValues(r)
	}
	for _, r := range []string{"failed", "stale"} {
		m.uploadsRemoved.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.gcRuns.WithLabelValues(r)
	}
	for _, r := range []string{reasonSize, reasonGC} {
		m.evictions.WithLabelValues(r)
		m.evictedBytes.WithLabelValues(r)
	}
	for _, c := range []string{"size", "scrub"} {
		m.corruptRemoved.WithLabelValues(c)
	}
	return m
}
