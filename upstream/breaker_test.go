package upstream

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestBreaker(threshold int) (*breaker, *fakeClock, *[]bool) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	var changes []bool
	b := &breaker{threshold: threshold, coolDown: 30 * time.Second, now: clock.now,
		onChange: func(open bool) { changes = append(changes, open) }}
	return b, clock, &changes
}

// admit runs one admitted call with outcome o; it reports whether the
// breaker admitted it.
func admit(b *breaker, o outcome) bool {
	done, ok := b.allow()
	if ok {
		done(o)
	}
	return ok
}

func TestBreakerOpensAfterConsecutiveFailures(t *testing.T) {
	b, _, changes := newTestBreaker(3)
	admit(b, outcomeUnavailable)
	admit(b, outcomeUnavailable)
	admit(b, outcomeSuccess) // an answer resets the count
	admit(b, outcomeUnavailable)
	admit(b, outcomeUnavailable)
	if b.refusing() {
		t.Fatal("opened after 2 consecutive failures with threshold 3")
	}
	admit(b, outcomeUnavailable)
	if !b.refusing() || admit(b, outcomeSuccess) {
		t.Fatal("not open after 3 consecutive failures")
	}
	if len(*changes) != 1 || !(*changes)[0] {
		t.Errorf("changes %v, want [true]", *changes)
	}
}

func TestBreakerHalfOpenLetsOneProbeThrough(t *testing.T) {
	b, clock, changes := newTestBreaker(1)
	admit(b, outcomeUnavailable)
	clock.advance(29 * time.Second)
	if _, ok := b.allow(); ok {
		t.Fatal("admitted a call during the cool-down")
	}
	clock.advance(time.Second)
	probe, ok := b.allow()
	if !ok {
		t.Fatal("no probe after the cool-down")
	}
	if _, ok := b.allow(); ok {
		t.Fatal("a second call went through while the probe is in flight")
	}
	probe(outcomeUnavailable)
	if _, ok := b.allow(); ok {
		t.Fatal("a failed probe must restart the cool-down")
	}
	clock.advance(30 * time.Second)
	if !admit(b, outcomeSuccess) || b.refusing() {
		t.Fatal("a successful probe must close the circuit")
	}
	if got := *changes; len(got) != 2 || !got[0] || got[1] {
		t.Errorf("changes %v, want [true false]", got)
	}
}

func TestBreakerAbandonedProbeFreesTheSlot(t *testing.T) {
	b, clock, _ := newTestBreaker(1)
	admit(b, outcomeUnavailable)
	clock.advance(30 * time.Second)
	probe, _ := b.allow()
	probe(outcomeAbandoned)
	if !admit(b, outcomeSuccess) {
		t.Fatal("the next call after an abandoned probe was refused")
	}
}

func TestBreakerAbandonedCallsDoNotCount(t *testing.T) {
	b, _, _ := newTestBreaker(2)
	admit(b, outcomeUnavailable)
	admit(b, outcomeAbandoned)
	if b.refusing() {
		t.Fatal("an abandoned call counted as a failure")
	}
}

func TestBreakerDisabled(t *testing.T) {
	b, _, _ := newTestBreaker(-1)
	for range 100 {
		admit(b, outcomeUnavailable)
	}
	if b.refusing() || !admit(b, outcomeSuccess) {
		t.Fatal("a disabled breaker refused a call")
	}
}
