package main

import (
	"bytes"
	"maps"
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

func TestS3Targets(t *testing.T) {
	r := &results{s3: &s3Result{
		blobSize: 50 << 20, recordCacheTTL: 5 * time.Minute,
		throughput: map[int]map[string][]float64{
			1: {srvS3Direct: {100, 100}, srvPullbrokerS3: {85, 80}},
			8: {srvS3Direct: {100}, srvPullbrokerS3: {70}},
		},
		head: []s3HeadRow{
			{name: headFSRecordCache, requests: 1000, rate: 1000},
			{name: headS3RecordCache, requests: 1000, rate: 900},
			{name: headS3NoRecordCache, requests: 1000, rate: 100, storage: s3Requests{all: s3Ops{"GetObject": 3000}}},
		},
	}}
	got := map[string]bool{}
	for _, tg := range r.targets() {
		got[tg.goal] = tg.met
	}
	want := map[string]bool{
		"S3, cached 50 MiB blob, 1 client(s): at least 0.8× a signed GET from the S3 server": true,
		"S3, cached 50 MiB blob, 8 client(s): at least 0.8× a signed GET from the S3 server": false,
		"S3, pinned-tag HEADs: at least 0.8× the rate on the filesystem":                     true,
		// The reads of the load without the record cache are shown, not held against it.
		"S3, pinned-tag HEADs after warm-up: zero object-storage reads": true,
	}
	for goal, met := range want {
		if g, ok := got[goal]; !ok || g != met {
			t.Errorf("%q: met=%v (present %v), want %v", goal, g, ok, met)
		}
	}

	// A read of a cache object during the load with the record cache misses the target; the
	// replicas' own requests on cluster/ and uploads/ do not count.
	r.s3.head[1].storage = s3Requests{all: s3Ops{"GetObject": 4, "HeadObject": 1, "PutObject": 2}, bookkeeping: s3Ops{"GetObject": 3}}
	for _, tg := range r.targets() {
		if tg.goal == "S3, pinned-tag HEADs after warm-up: zero object-storage reads" && (tg.met || !strings.Contains(tg.detail, "2 reads for 1000 HEADs")) {
			t.Errorf("with 2 cache reads: met=%v, %q", tg.met, tg.detail)
		}
	}
}

func TestScaleTargets(t *testing.T) {
	const n = 1_000_000
	r := &results{scale: &scaleResult{runs: []scaleRun{
		{storage: "filesystem", objects: n, ready: 300 * time.Millisecond, accounted: 40 * time.Second, counted: n,
			rssPeak: 150 << 20, rssSmall: 50 << 20, headLarge: []float64{900, 800}, headSmall: []float64{1000, 1000}},
		{storage: "S3", objects: n, ready: 2 * time.Second, accounted: accountingLimit, counted: n / 2,
			rssPeak: 200 << 20, rssSmall: 50 << 20, headLarge: []float64{500}, headSmall: []float64{1000}},
	}}}
	got := map[string]target{}
	for _, tg := range r.targets() {
		got[tg.goal] = tg
	}
	want := map[string]bool{
		"scale, filesystem, 1000000 objects: peak RSS at most 64 MiB + 100 bytes per object":             true,
		"scale, filesystem, 1000000 objects: /v2/ answers within 1 s of the start":                       true,
		"scale, filesystem, 1000000 objects: accounting done within 60 s of the start":                   true,
		"scale, filesystem, 1000000 objects: pinned-tag HEADs at least 0.8× the rate over a small cache": true,
		"scale, S3, 1000000 objects: peak RSS at most 64 MiB + 100 bytes per object":                     false,
		"scale, S3, 1000000 objects: /v2/ answers within 1 s of the start":                               false,
		"scale, S3, 1000000 objects: accounting done within 60 s of the start":                           false,
		"scale, S3, 1000000 objects: pinned-tag HEADs at least 0.8× the rate over a small cache":         false,
	}
	for goal, met := range want {
		if g, ok := got[goal]; !ok || g.met != met {
			t.Errorf("%q: met=%v (present %v), want %v", goal, g.met, ok, met)
		}
	}
	if d := got["scale, S3, 1000000 objects: accounting done within 60 s of the start"].detail; !strings.Contains(d, "at 500000 of 1000000") {
		t.Errorf("unfinished accounting is reported as %q, want how far it got", d)
	}
	var buf bytes.Buffer
	r.write(&buf)
	if !strings.Contains(buf.String(), "not done: 500000 of 1000000") {
		t.Errorf("the table does not show the unfinished accounting:\n%s", buf.String())
	}
}

func TestCountRequests(t *testing.T) {
	line := func(op, key, uri string) string {
		return "owner bucket [06/December/2026:22:22:49 +0000] 127.0.0.1 owner REQID s3_" + op + " " + key + " " + uri +
			" 200 - 249 0 0 0 - aws-sdk-go/1.55.5 (go1.26.8; linux; amd64) - HOSTID SigV4 - AuthHeader s3.us-east-1.amazonaws.com -\n"
	}
	log := line("GetObject", "repos/upstream.bench/bench/head/_pins/pinned", "/bucket/repos/upstream.bench/bench/head/_pins/pinned") +
		line("HeadObject", "blobs/sha256/ab/ab12/data", "/bucket/blobs/sha256/ab/ab12/data") +
		line("ListObjectsV2", "-", "/bucket?list-type=2&max-keys=1000&prefix=blobs%2F") +
		line("GetObject", "cluster/leader", "/bucket/cluster/leader") +
		line("ListObjectsV2", "-", "/bucket?list-type=2&prefix=cluster%2Fjournal%2F") +
		line("PutObject", "cluster/journal/a/1", "/bucket/cluster/journal/a/1") +
		line("PutObject", "uploads/0f3a", "/bucket/uploads/0f3a") +
		line("HeadObject", "uploads/0f3a", "/bucket/uploads/0f3a") +
		line("CopyObject", "cluster/usage", "/bucket/cluster/usage") +
		line("ListObjectsV2", "-", "/bucket?list-type=2&prefix=uploads%2F0f3a") +
		"log starts 2026-12-06 22:22:49\n"
	got, err := countRequests(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	wantAll := s3Ops{"GetObject": 2, "HeadObject": 2, "ListObjectsV2": 3, "PutObject": 2, "CopyObject": 1}
	wantApart := s3Ops{"GetObject": 1, "HeadObject": 1, "ListObjectsV2": 2, "PutObject": 2, "CopyObject": 1}
	if !maps.Equal(got.all, wantAll) || !maps.Equal(got.bookkeeping, wantApart) || got.cacheReads() != 3 {
		t.Errorf("counted %v, on cluster/ or uploads/ %v, %d cache reads; want %v, %v, 3", got.all, got.bookkeeping, got.cacheReads(), wantAll, wantApart)
	}
}
