package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// breakerTransport admits each request through the circuit breaker and
// reports its outcome, judged by the response headers: a body cut off
// later is the reader's error, not a breaker failure. A redirected blob
// fetch is admitted hop by hop.
type breakerTransport struct {
	breaker *breaker
	inner   http.RoundTripper
}

func (t *breakerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	done, ok := t.breaker.allow()
	if !ok {
		closeRequestBody(req)
		return nil, ErrCircuitOpen
	}
	resp, err := t.inner.RoundTrip(req)
	done(judge(req.Context(), resp, err))
	return resp, err
}

// judge tells the breaker what a round trip says about the upstream.
func judge(ctx context.Context, resp *http.Response, err error) outcome {
	switch {
	case err == nil && statusUnavailable(resp.StatusCode):
		return outcomeUnavailable
	case err == nil:
		return outcomeSuccess // the upstream answered (even 404 or 401)
	case errors.Is(ctx.Err(), context.Canceled):
		return outcomeAbandoned
	case IsUnavailable(classifyRequestError(err)):
		return outcomeUnavailable
	}
	return outcomeSuccess
}

// breakerReporter logs and counts the breaker's transitions.
func breakerReporter(upstream string, m *metrics, log *slog.Logger, threshold int, coolDown time.Duration) func(open bool) {
	labels := prometheus.Labels{"upstream": upstream}
	gauge := m.circuitOpen.With(labels)
	gauge.Set(0)
	return func(open bool) {
		if open {
			gauge.Set(1)
			m.circuitOpens.With(labels).Inc()
			log.Warn("upstream circuit opened: calls fail fast until a probe succeeds",
				"consecutiveFailures", threshold, "coolDown", coolDown)
		} else {
			gauge.Set(0)
			log.Info("upstream circuit closed: upstream answers again")
		}
	}
}

// breakerState is the circuit breaker's state.
type breakerState int

const (
	breakerClosed   breakerState = iota // calls pass; failures are counted
	breakerOpen                         // calls are refused until the cool-down ends
	breakerHalfOpen                     // one probe call is in flight; others are refused
)

// outcome is how a call that the breaker let through ended.
type outcome int

const (
	outcomeSuccess     outcome = iota // the upstream answered (even 404 or 401)
	outcomeUnavailable                // network error, timeout, 5xx, 429
	outcomeAbandoned                  // the caller gave up: says nothing about the upstream
)

// breaker is a consecutive-failure circuit breaker. It exists so that a
// dead upstream costs each request nothing instead of one more timeout.
type breaker struct {
	threshold int // consecutive unavailable calls that open the circuit; <= 0 disables
	coolDown  time.Duration
	now       func() time.Time
	// onChange is called (under the lock, so in order) when the breaker
	// starts or stops refusing calls.
	onChange func(open bool)

	mu       sync.Mutex
	state    breakerState
	failures int
	openedAt time.Time
}

func newBreaker(threshold int, coolDown time.Duration, onChange func(open bool)) *breaker {
	return &breaker{threshold: threshold, coolDown: coolDown, now: time.Now, onChange: onChange}
}

// allow reports whether a call may go ahead. When it may, the caller must
// report the call's outcome with done exactly once.
func (b *breaker) allow() (done func(outcome), ok bool) {
	if b.threshold <= 0 {
		return func(outcome) {}, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerOpen:
		if b.now().Sub(b.openedAt) < b.coolDown {
			return nil, false
		}
		// Cool-down over: this call is the probe; the rest wait for it.
		b.state = breakerHalfOpen
		return b.doneFunc(true), true
	case breakerHalfOpen:
		return nil, false
	default:
		return b.doneFunc(false), true
	}
}

func (b *breaker) doneFunc(probe bool) func(outcome) {
	var once sync.Once
	return func(o outcome) { once.Do(func() { b.record(o, probe) }) }
}

func (b *breaker) record(o outcome, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch o {
	case outcomeSuccess:
		wasRefusing := b.state != breakerClosed
		b.state = breakerClosed
		b.failures = 0
		if wasRefusing && b.onChange != nil {
			b.onChange(false)
		}
	case outcomeUnavailable:
		if probe || b.state == breakerHalfOpen {
			b.trip()
			return
		}
		if b.state != breakerClosed {
			return // already open: a call admitted before it opened
		}
		b.failures++
		if b.failures >= b.threshold {
			b.trip()
		}
	case outcomeAbandoned:
		if probe && b.state == breakerHalfOpen {
			// Let the next call probe; the cool-down is already over.
			b.state = breakerOpen
		}
	}
}

// trip opens the circuit; the caller holds the lock.
func (b *breaker) trip() {
	wasClosed := b.state == breakerClosed
	b.state = breakerOpen
	b.openedAt = b.now()
	b.failures = 0
	if b.onChange != nil && wasClosed {
		b.onChange(true)
	}
}
