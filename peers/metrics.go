package peers

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

type metrics struct {
	forwards            *prometheus.CounterVec
	forwardBytes        prometheus.Counter
	ownerUnreachable    *prometheus.CounterVec
	verificationFailure prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, c *Cluster) *metrics {
	m := &metrics{
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_peer_forwards_total",
			Help: "Requests sent to the owning peer instead of the upstream, by kind (blob, manifest).",
		}, []string{"kind"}),
		forwardBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_peer_forward_bytes_total",
			Help: "Blob bytes received from owning peers.",
		}),
		ownerUnreachable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullbroker_peer_owner_unreachable_total",
			Help: "Fetches done from the upstream because the owning peer was unreachable, slow to send its first byte, answered an error, failed mid-stream or sent wrong bytes, by kind (blob, manifest).",
		}, []string{"kind"}),
		verificationFailure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_peer_verification_failures_total",
			Help: "Blobs a peer sent whose bytes did not match their digest.",
		}),
	}
	m.forwards = metricsreg.Shared(reg, m.forwards)
	m.forwardBytes = metricsreg.Shared(reg, m.forwardBytes)
	m.ownerUnreachable = metricsreg.Shared(reg, m.ownerUnreachable)
	m.verificationFailure = metricsreg.Shared(reg, m.verificationFailure)
	metricsreg.Shared(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pullbroker_peers_live",
		Help: "Peers in the peer set, this replica included, that are not being avoided after a failed connection or a hang.",
	}, func() float64 { return float64(c.livePeers()) }))
	return m
}
