package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestTargets(t *testing.T) {
	r := &results{
		bigSize: 256 << 20, coldImage: 1000, coldClients: 32, ttfbLayerSize: 32 << 20,
		throughput: map[int]map[string][]float64{
			1: {srvSendfile: {100}, srvPullbroker: {85}, srvDistribution: {50}},
			8: {srvSendfile: {100}, srvPullbroker: {70}, srvDistribution: {90}},
		},
		head: []headRow{
			{name: headPinned, rate: 5000, requests: 1000, upstream: 0},
			{name: headDist, rate: 600, requests: 1000, upstream: 2000},
		},
		cold: []coldRow{{server: srvPullbroker, upstreamBytes: 1000, ratio: 1}},
		rss:  map[string]map[string]int64{srvPullbroker: {phaseFillBig: 200 << 20, phaseFillTTFB: 40 << 20}},
		ttfb: map[string][]time.Duration{srvPullbroker: {time.Millisecond}},
	}
	got := map[string]bool{}
	for _, tg := range r.targets() {
		got[tg.goal] = tg.met
	}
	want := map[string]bool{
		"cached throughput, 1 client(s): at least 0.8 of the sendfile ceiling":   true,
		"cached throughput, 1 client(s): above distribution's":                   true,
		"cached throughput, 8 client(s): at least 0.8 of the sendfile ceiling":   false,
		"cached throughput, 8 client(s): above distribution's":                   false,
		"pinned tag HEADs: at least 10× distribution's rate":                     false,
		"pinned tag HEADs: zero upstream requests":                               true,
		"cold concurrent pull: each byte fetched from upstream once (ratio 1.0)": true,
		"memory flat in blob size":                                               false,
	}
	for goal, met := range want {
		if g, ok := got[goal]; !ok || g != met {
			t.Errorf("%q: met=%v (present %v), want %v", goal, g, ok, met)
		}
	}
	var buf bytes.Buffer
	r.write(&buf)
	if !strings.Contains(buf.String(), "**missed**") || !strings.Contains(buf.String(), "missed by 0.10") {
		t.Errorf("report does not say what was missed by how much:\n%s", buf.String())
	}
}

func TestPairedRatio(t *testing.T) {
	// Load from elsewhere halves both servers in the last rounds: the
	// ratio of medians would say 0.75, every round says 1.
	r := &results{throughput: map[int]map[string][]float64{1: {
		srvSendfile:   {4, 4, 2, 2, 2},
		srvPullbroker: {4, 4, 2, 2, 2},
	}}}
	r.throughput[1][srvSendfile][1] = 4.2
	if got := r.pairedRatio(1, srvPullbroker, srvSendfile); got != 1 {
		t.Errorf("paired ratio = %v, want 1", got)
	}
	if got := r.pairedRatio(8, srvPullbroker, srvSendfile); got != 0 {
		t.Errorf("paired ratio without samples = %v, want 0", got)
	}
}
