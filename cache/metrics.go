package cache

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fillsInFlight prometheus.Gauge
	fillClients   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		fillsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_fills_in_flight",
			Help: "Blob fetches from upstreams currently running.",
		}),
		fillClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_fill_clients",
			Help: "Client responses currently following a running fill.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.fillsInFlight, m.fillClients} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
