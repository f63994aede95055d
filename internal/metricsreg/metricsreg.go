// Package metricsreg is how every package registers its metrics: on the
// Registerer it was handed, through Shared, so that several instances (every
// upstream client, every credential source, a second store or handler in a
// test) count into the same families instead of failing on the second
// registration. Metric names are written whole ("pullbroker_..."), never
// assembled from Namespace and Subsystem, so that a grep for a name on a
// dashboard finds the code.
package metricsreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Shared registers c on reg, or returns the collector already registered
// under the same description. A nil reg leaves c unregistered.
func Shared[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A clashing, different collector under the same name is a
		// programming error; ours keeps counting, unexported, rather than
		// failing the whole proxy.
	}
	return c
}
