// Package metricsreg registers collectors that several instances share:
// every upstream client, every credential source, registers the same
// metric families on one Registerer and must count into the same ones.
package metricsreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Shared registers c on reg, or returns the collector already registered
// under the same description.
func Shared[C prometheus.Collector](reg prometheus.Registerer, c C) C {
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
