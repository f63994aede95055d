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

func TestQuantile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 100 * time.Millisecond}, {0.99, 198 * time.Millisecond}, {1, 200 * time.Millisecond}} {
		if got := quantile(ds, c.q); got != c.want {
			t.Errorf("quantile(1..200 ms, %v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := quantile(nil, 0.99); got != 0 {
		t.Errorf("quantile of nothing = %v, want 0", got)
	}
}

func TestLoadReport(t *testing.T) {
	a := &loadWorker{latencies: make([][]time.Duration, len(loadKinds)), errors: make([]int, len(loadKinds))}
	b := &loadWorker{latencies: make([][]time.Duration, len(loadKinds)), errors: make([]int, len(loadKinds))}
	a.latencies[0] = []time.Duration{3 * time.Millisecond, time.Millisecond}
	b.latencies[0] = []time.Duration{2 * time.Millisecond}
	b.latencies[5] = []time.Duration{9 * time.Millisecond}
	b.errors[5] = 2
	rows, total := summarize([]*loadWorker{a, b})
	if rows[0].requests != 3 || rows[0].p50 != 2*time.Millisecond || rows[0].max != 3*time.Millisecond {
		t.Errorf("%s row = %+v", loadKinds[0], rows[0])
	}
	if rows[5].requests != 3 || rows[5].errors != 2 || rows[5].max != 9*time.Millisecond {
		t.Errorf("%s row = %+v: failed requests count as requests, not as latencies", loadKinds[5], rows[5])
	}
	if total.requests != 6 || total.errors != 2 || total.max != 9*time.Millisecond {
		t.Errorf("total = %+v", total)
	}

	r := &results{only: "load", load: &loadResult{
		clients: 500, duration: time.Minute, elapsed: time.Minute, rows: rows, total: total,
		errorSamples: []string{"GET /v2/x: 503 Service Unavailable"}, upstream: 0, rss: 60 << 20,
	}}
	got := map[string]bool{}
	for _, tg := range r.targets() {
		got[tg.goal] = tg.met
	}
	want := map[string]bool{
		"load, 500 clients over cached manifests and blobs: zero errors":                          false,
		"load, 500 clients over pinned and fresh tags, digests and blobs: zero upstream requests": true,
	}
	if len(got) != len(want) {
		t.Errorf("targets %v, want only the load's", got)
	}
	for goal, met := range want {
		if g, ok := got[goal]; !ok || g != met {
			t.Errorf("%q: met=%v (present %v), want %v", goal, g, ok, met)
		}
	}
	var buf bytes.Buffer
	r.write(&buf)
	out := buf.String()
	for _, s := range []string{"## (6) Load: 500 concurrent clients", "| all | 6 |", "503 Service Unavailable", "60 MiB"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "## (1)") {
		t.Errorf("-only load report has the comparison's sections:\n%s", out)
	}
}
