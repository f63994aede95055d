package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Server names, as the tables show them.
const (
	srvSendfile     = "sendfile ceiling"
	srvPullbroker   = "pullbroker"
	srvDistribution = "distribution proxy"
	srvUpstream     = "upstream itself (reference)"
	srvS3Direct     = "S3 server, signed GET"
	srvPullbrokerS3 = "pullbroker on S3"
	srvS3Relay      = "S3 server through a bare TCP relay"
)

type machine struct {
	CPUs       int
	CPUModel   string
	MemTotal   int64
	Kernel     string
	GoVersion  string
	Pullbroker string // git revision of the checkout
	Registry   string // distribution version
	Date       time.Time
	// Load averages at the start and the end: other work on the machine.
	LoadStart, LoadEnd string
}

type headRow struct {
	name       string
	server     string
	rate       float64 // requests per second
	requests   int
	upstream   int64 // upstream requests during the run
	byMethod   map[string]int64
	per1000    float64
	elapsedSec float64
}

type coldRow struct {
	server        string
	wall          time.Duration
	upstreamBytes int64
	blobRequests  int64
	ratio         float64
}

type results struct {
	quick   bool
	only    string // "" or the one measurement that ran (-only)
	machine machine

	bigSize       int64
	coldImage     int64 // bytes of the 3-layer image
	coldLayers    int
	coldLayerSize int64
	coldClients   int
	ttfbLayerSize int64
	ttfbLayers    int
	headWorkers   int
	rounds        int
	perClient     map[int]int

	// throughput[clients][server] is every round's bytes per second.
	throughput map[int]map[string][]float64
	head       []headRow
	cold       []coldRow
	ttfb       map[string][]time.Duration
	// rss[server][phase] is the phase's peak resident memory in bytes.
	rss map[string]map[string]int64
	// coldFill[server] is the time of the first, cold GET of the big blob.
	coldFill map[string]time.Duration
	// load is measurement (6), when it ran.
	load *loadResult
	// s3 is measurement (7), when it ran.
	s3 *s3Result
	// scale is measurement (8), when it ran.
	scale *scaleResult
	// peers is measurement (9), when it ran.
	peers *peersResult
}

// s3Result is measurement (7).
type s3Result struct {
	blobSize       int64
	rounds         int
	perClient      map[int]int
	headWorkers    int
	headRounds     int
	recordCacheTTL time.Duration
	// throughput[clients][server] is every round's bytes per second.
	throughput map[int]map[string][]float64
	head       []s3HeadRow // in the order they ran
}

// s3HeadRow is one HEAD load of (7).
type s3HeadRow struct {
	name     string
	requests int
	rate     float64
	storage  s3Requests // reaching the S3 server during the load
	upstream int64
}

// HEAD loads of (7).
const (
	headFSRecordCache   = "filesystem, recordCacheTTL"
	headS3RecordCache   = "S3, recordCacheTTL"
	headS3NoRecordCache = "S3, no record cache (recordCacheTTL 0)"
)

// rates are the rates of the loads named name, in the order they ran.
func (s *s3Result) rates(name string) []float64 {
	var out []float64
	for _, h := range s.head {
		if h.name == name {
			out = append(out, h.rate)
		}
	}
	return out
}

// scaleResult is measurement (8).
type scaleResult struct {
	cache          syntheticCache
	writeTime      time.Duration
	headWorkers    int
	headRounds     int
	recordCacheTTL time.Duration // of the S3 runs
	runs           []scaleRun
}

// scaleRun is (8) on one storage.
type scaleRun struct {
	storage string
	// objects is what the storage held under blobs/: the synthetic cache,
	// and on S3 the HEAD image the filesystem run stored too.
	objects int
	// ready is from the process start to /v2/ answering; accounted to the
	// objects gauge reaching the objects written (counted, if it did not
	// within accountingLimit).
	ready, accounted time.Duration
	counted          int
	// Peak resident memory (VmHWM) of the large cache's pullbroker when
	// accounting was done and at the end, and the small one's at the end.
	rssAccounted, rssPeak, rssSmall int64
	// Pinned-tag HEAD rates per round.
	headLarge, headSmall []float64
}

func (s scaleRun) accountingDone() bool { return s.counted >= s.objects }

// rssAllowance is the peak memory issue 10 allows a cache of blobs
// objects: 64 MiB and 100 bytes an object.
func rssAllowance(objects int) int64 { return 64<<20 + 100*int64(objects) }

// loadRow is one request kind of the load (or all of them): requests
// answered, of which errors failed; latencies of the others.
type loadRow struct {
	kind             string
	requests, errors int
	p50, p99, max    time.Duration
}

type loadResult struct {
	clients  int
	duration time.Duration // asked for
	elapsed  time.Duration // from the first request to the last answer
	images   int
	blobs    int
	rows     []loadRow
	total    loadRow
	// errorSamples are the first error messages.
	errorSamples []string
	upstream     int64 // upstream requests during the load
	byMethod     map[string]int64
	rss          int64 // pullbroker's peak resident memory during the load
}

func (l *loadResult) rate(row loadRow) float64 { return float64(row.requests) / l.elapsed.Seconds() }

// RSS phases.
const (
	phaseHead     = "(2) manifest HEADs"
	phaseCold     = "(3) cold pull, 32 clients"
	phaseFillBig  = "cold fill of the big blob"
	phaseFillTTFB = "(5) cold fills of the TTFB blobs"
	phaseCached   = "(1) cached blob serving"
)

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func rate(bps float64) string {
	if bps >= 1<<30 {
		return fmt.Sprintf("%.2f GiB/s", bps/(1<<30))
	}
	return fmt.Sprintf("%.0f MiB/s", bps/(1<<20))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// target is one goal of issue 6 and how this run did against it.
type target struct {
	goal   string
	met    bool
	detail string
}

// pairedRatio is the median over rounds of a's rate divided by b's in the
// same round. The servers of one round are measured seconds apart, so
// load from elsewhere on the machine, which comes and goes over a run,
// weighs on both sides of each ratio alike.
func (r *results) pairedRatio(clients int, a, b string) float64 {
	return pairedRatio(r.throughput[clients][a], r.throughput[clients][b])
}

// pairedRatio is the median over rounds of as[i] / bs[i].
func pairedRatio(as, bs []float64) float64 {
	var ratios []float64
	for i := range min(len(as), len(bs)) {
		if bs[i] > 0 {
			ratios = append(ratios, as[i]/bs[i])
		}
	}
	return median(ratios)
}

func (r *results) tput(clients int, server string) float64 {
	return median(r.throughput[clients][server])
}

func (r *results) headRow(name string) (headRow, bool) {
	for _, h := range r.head {
		if h.name == name {
			return h, true
		}
	}
	return headRow{}, false
}

func (r *results) coldRow(server string) (coldRow, bool) {
	for _, c := range r.cold {
		if c.server == server {
			return c, true
		}
	}
	return coldRow{}, false
}

// Head scenario names.
const (
	headPinned = "pullbroker, pinned tag"
	headTTL    = "pullbroker, tag within TTL"
	headDist   = "distribution proxy"
)

// flatSlack is how much more memory a fill of the big blob may take than
// fills of the small ones for memory to count as flat in blob size.
const flatSlack = 32 << 20

func (r *results) targets() []target {
	var out []target
	clients := slices.Sorted(maps.Keys(r.throughput))
	for _, c := range clients {
		pb, ceil, dist := r.tput(c, srvPullbroker), r.tput(c, srvSendfile), r.tput(c, srvDistribution)
		if ceil > 0 {
			ratio := r.pairedRatio(c, srvPullbroker, srvSendfile)
			t := target{goal: fmt.Sprintf("cached throughput, %d client(s): at least 0.8 of the sendfile ceiling", c), met: ratio >= 0.8}
			t.detail = fmt.Sprintf("%.2f of the ceiling, median of per-round ratios (medians: %s and %s)", ratio, rate(pb), rate(ceil))
			if !t.met {
				t.detail += fmt.Sprintf("; missed by %.2f", 0.8-ratio)
			}
			out = append(out, t)
		}
		if dist > 0 {
			ratio := r.pairedRatio(c, srvPullbroker, srvDistribution)
			t := target{goal: fmt.Sprintf("cached throughput, %d client(s): above distribution's", c), met: ratio > 1}
			t.detail = fmt.Sprintf("%.2f× distribution, median of per-round ratios (medians: %s and %s)", ratio, rate(pb), rate(dist))
			out = append(out, t)
		}
	}
	if pin, ok := r.headRow(headPinned); ok {
		if dist, ok := r.headRow(headDist); ok && dist.rate > 0 {
			x := pin.rate / dist.rate
			t := target{goal: "pinned tag HEADs: at least 10× distribution's rate", met: x >= 10}
			t.detail = fmt.Sprintf("%.1f× (%.0f vs %.0f req/s)", x, pin.rate, dist.rate)
			if !t.met {
				t.detail += fmt.Sprintf("; missed by %.1f×", 10-x)
			}
			out = append(out, t)
		}
		out = append(out, target{
			goal:   "pinned tag HEADs: zero upstream requests",
			met:    pin.upstream == 0,
			detail: fmt.Sprintf("%d upstream requests for %d HEADs", pin.upstream, pin.requests),
		})
	}
	if c, ok := r.coldRow(srvPullbroker); ok {
		t := target{goal: "cold concurrent pull: each byte fetched from upstream once (ratio 1.0)", met: c.ratio <= 1.001}
		t.detail = fmt.Sprintf("ratio %.3f (%d upstream bytes for a %d byte image, %d clients)", c.ratio, c.upstreamBytes, r.coldImage, r.coldClients)
		out = append(out, t)
	}
	if rss := r.rss[srvPullbroker]; rss != nil && rss[phaseFillBig] > 0 && rss[phaseFillTTFB] > 0 {
		big, small := rss[phaseFillBig], rss[phaseFillTTFB]
		t := target{goal: "memory flat in blob size", met: big <= small+flatSlack}
		t.detail = fmt.Sprintf("peak RSS %s filling the %s blob vs %s filling %s blobs", mib(big), mib(r.bigSize), mib(small), mib(r.ttfbLayerSize))
		if !t.met {
			t.detail += fmt.Sprintf("; %s over the %s allowance", mib(big-small-flatSlack), mib(flatSlack))
		}
		out = append(out, t)
	}
	if l := r.load; l != nil {
		t := target{goal: fmt.Sprintf("load, %d clients over cached manifests and blobs: zero errors", l.clients), met: l.total.errors == 0}
		t.detail = fmt.Sprintf("%d errors in %d requests in %s (%.0f req/s; p99 %s, max %s; peak RSS %s)",
			l.total.errors, l.total.requests, l.elapsed.Round(time.Second), l.rate(l.total), ms(l.total.p99), ms(l.total.max), mib(l.rss))
		out = append(out, t)
		out = append(out, target{
			goal:   fmt.Sprintf("load, %d clients over pinned and fresh tags, digests and blobs: zero upstream requests", l.clients),
			met:    l.upstream == 0,
			detail: fmt.Sprintf("%d upstream requests for %d requests", l.upstream, l.total.requests),
		})
	}
	out = append(out, r.s3Targets()...)
	out = append(out, r.scaleTargets()...)
	return append(out, r.peersTargets()...)
}

func (r *results) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	m := r.machine
	p("# Benchmark: pullbroker against distribution's pull-through proxy\n\n")
	p("Written by `go run ./bench` (see [README.md](README.md)) on %s. All traffic on 127.0.0.1; one upstream\n", m.Date.UTC().Format("2006-01-02 15:04 MST"))
	p("(distribution `registry`, filesystem storage) behind a counting reverse proxy, with ")
	switch r.only {
	case "":
		p("pullbroker and\ndistribution's proxy (`proxy.remoteurl`) both in front of it, each with an empty filesystem cache\n")
		p("at the start, and further pullbrokers on S3 storage (7) and over a large cache (8). Ratios compare\nnumbers measured in this same run.\n\n")
	case onlyLoad:
		p("pullbroker in\nfront of it, its filesystem cache empty at the start.\n\n")
	case onlyS3:
		p("pullbrokers on\nS3 storage and on the filesystem in front of it. Ratios compare numbers measured in this same run.\n\n")
	case onlyScale:
		p("pullbrokers over\na large synthetic cache and over a small one in front of it. Ratios compare numbers measured in\nthis same run.\n\n")
	case onlyPeers:
		p("three pullbrokers\nwith peers on one S3 bucket and one pullbroker on another in front of it. Ratios compare numbers\nmeasured in this same run.\n\n")
	}
	if r.quick {
		p("**Quick mode (`-quick`): small sizes, one round. Not the numbers of record.**\n\n")
	}
	if r.only != "" {
		p("**Only measurement %q ran (`-only %s`).**\n\n", r.only, r.only)
	}
	p("## Machine\n\n")
	p("| | |\n|---|---|\n")
	p("| CPUs (nproc) | %d (%s) |\n| memory | %s |\n| kernel | %s |\n| Go | %s |\n", m.CPUs, m.CPUModel, mib(m.MemTotal), m.Kernel, m.GoVersion)
	p("| pullbroker | %s |\n| distribution | %s |\n", m.Pullbroker, m.Registry)
	p("| load average (1, 5, 15 min) at start / end | %s / %s |\n\n", m.LoadStart, m.LoadEnd)

	p("## Targets\n\n")
	for _, t := range r.targets() {
		mark := "met"
		if !t.met {
			mark = "**missed**"
		}
		p("- %s — %s: %s\n", t.goal, mark, t.detail)
	}
	p("\n")

	if r.only == "" {
		r.writeComparison(p)
	}
	if r.load != nil {
		r.writeLoad(p)
	}
	if r.s3 != nil {
		r.writeS3(p)
	}
	if r.scale != nil {
		r.writeScale(p)
	}
	if r.peers != nil {
		r.writePeers(p)
	}
}

// writeComparison writes measurements (1) to (5).
func (r *results) writeComparison(p func(format string, args ...any)) {
	p("## (1) Cached blob throughput\n\n")
	p("One %s blob already in both caches, GET by concurrent keep-alive clients (each client %s);\n", mib(r.bigSize), perClientText(r.perClient))
	p("%d rounds; in each, the three servers one after the other, in an order rotated every round. The\n", r.rounds)
	p("ceiling is net/http's `ServeFile` (sendfile) of pullbroker's own cached copy of the blob, in a\n")
	p("process of its own. Rates are medians over rounds; ratios are medians of the ratios within each\n")
	p("round, whose measurements are seconds apart (other load on the machine comes and goes).\n\n")
	p("| clients | %s | %s | %s | pullbroker / ceiling | pullbroker / distribution |\n|---|---|---|---|---|---|\n", srvSendfile, srvPullbroker, srvDistribution)
	for _, c := range slices.Sorted(maps.Keys(r.throughput)) {
		pb, ceil, dist := r.tput(c, srvPullbroker), r.tput(c, srvSendfile), r.tput(c, srvDistribution)
		p("| %d | %s | %s | %s | %.2f | %.2f |\n", c, rate(ceil), rate(pb), rate(dist),
			r.pairedRatio(c, srvPullbroker, srvSendfile), r.pairedRatio(c, srvPullbroker, srvDistribution))
	}
	p("\nEvery round:\n\n| clients | server | rounds |\n|---|---|---|\n")
	for _, c := range slices.Sorted(maps.Keys(r.throughput)) {
		for _, s := range []string{srvSendfile, srvPullbroker, srvDistribution} {
			var parts []string
			for _, v := range r.throughput[c][s] {
				parts = append(parts, rate(v))
			}
			p("| %d | %s | %s |\n", c, s, strings.Join(parts, ", "))
		}
	}
	p("\n")

	p("## (2) Manifest HEAD by tag\n\n")
	p("%d concurrent keep-alive clients HEAD one tag (containerd's Accept header) after one warm-up HEAD.\n\n", r.headWorkers)
	p("| scenario | requests | req/s | upstream requests | upstream requests per 1,000 | upstream requests by method |\n|---|---|---|---|---|---|\n")
	for _, h := range r.head {
		var parts []string
		for _, m := range slices.Sorted(maps.Keys(h.byMethod)) {
			parts = append(parts, fmt.Sprintf("%s %d", m, h.byMethod[m]))
		}
		p("| %s | %d | %.0f | %d | %.1f | %s |\n", h.name, h.requests, h.rate, h.upstream, h.per1000, strings.Join(parts, ", "))
	}
	p("\n")

	p("## (3) Cold pull by %d concurrent clients\n\n", r.coldClients)
	p("An image of %d layers of %s (%d bytes with manifest and config) that neither proxy holds; each\n", r.coldLayers, mib(r.coldLayerSize), r.coldImage)
	p("client GETs the manifest, the config, then the layers in parallel, and reads every byte (the first\n")
	p("client checks digests). Upstream bytes are manifest and blob response body bytes through the\ncounting proxy.\n\n")
	p("| proxy | wall time | upstream bytes | upstream / image size | upstream blob requests |\n|---|---|---|---|---|\n")
	for _, c := range r.cold {
		p("| %s | %s | %d | %.3f | %d |\n", c.server, c.wall.Round(time.Millisecond), c.upstreamBytes, c.ratio, c.blobRequests)
	}
	p("\n")

	p("## (4) Peak resident memory\n\n")
	p("VmHWM of each proxy process, reset (`/proc/<pid>/clear_refs`) at the start of each phase.\n\n")
	phases := []string{phaseHead, phaseCold, phaseCached, phaseFillBig, phaseFillTTFB}
	p("| proxy | %s |\n|---|%s\n", strings.Join(phases, " | "), strings.Repeat("---|", len(phases)))
	for _, s := range []string{srvPullbroker, srvDistribution} {
		var cells []string
		for _, ph := range phases {
			cells = append(cells, mib(r.rss[s][ph]))
		}
		p("| %s | %s |\n", s, strings.Join(cells, " | "))
	}
	p("\nThe big blob is %s; the TTFB blobs are %s each.\n\n", mib(r.bigSize), mib(r.ttfbLayerSize))

	p("## (5) Time to first byte of a cold blob\n\n")
	p("%d blobs of %s that the proxy does not hold, GET one after the other after the image's manifest;\n", r.ttfbLayers, mib(r.ttfbLayerSize))
	p("time from sending the request to the first body byte. The first GET of the big blob is shown too.\n\n")
	p("| proxy | median | min | max | first GET of the %s blob (whole body) |\n|---|---|---|---|---|\n", mib(r.bigSize))
	for _, s := range []string{srvPullbroker, srvDistribution, srvUpstream} {
		ds := r.ttfb[s]
		if len(ds) == 0 {
			continue
		}
		fill := "–"
		if d, ok := r.coldFill[s]; ok {
			fill = d.Round(time.Millisecond).String()
		}
		p("| %s | %s | %s | %s | %s |\n", s, ms(medianDuration(ds)), ms(slices.Min(ds)), ms(slices.Max(ds)), fill)
	}
	p("\n")
}

func (r *results) writeLoad(p func(format string, args ...any)) {
	l := r.load
	p("## (6) Load: %d concurrent clients over cached content\n\n", l.clients)
	p("%d keep-alive clients sharing one `http.Transport` (an idle connection kept for each) send one\n", l.clients)
	p("request after another for %.0f s (or until a request cap), rotating through the kinds below, to\n", l.duration.Seconds())
	p("pullbroker alone. Content: %d images in `%s`, each under a pinned tag (a `sticky` rule) and\n", l.images, loadRepo)
	p("a tag within its `tagTTL`; %d blobs (configs, and layers of %s), all pulled once\n", l.blobs, blobSizesText())
	p("before the clock starts. Every answer is checked: status 200, `Docker-Content-Digest`, and for\n")
	p("GETs the body's length and sha256. Latency runs from sending the request to the last body byte,\n")
	p("over successful requests; the clients share the machine's cores with pullbroker.\n\n")
	p("| request | requests | req/s | p50 | p99 | max | errors |\n|---|---|---|---|---|---|---|\n")
	for _, row := range append(slices.Clone(l.rows), l.total) {
		p("| %s | %d | %.0f | %s | %s | %s | %d |\n", row.kind, row.requests, l.rate(row), ms(row.p50), ms(row.p99), ms(row.max), row.errors)
	}
	var parts []string
	for _, m := range slices.Sorted(maps.Keys(l.byMethod)) {
		parts = append(parts, fmt.Sprintf("%s %d", m, l.byMethod[m]))
	}
	p("\nElapsed %s. Peak resident memory of pullbroker during the load (VmHWM, reset at its start): %s.\n", l.elapsed.Round(time.Millisecond), mib(l.rss))
	p("Upstream requests during the load: %d", l.upstream)
	if len(parts) > 0 {
		p(" (%s)", strings.Join(parts, ", "))
	}
	p(".\n")
	if len(l.errorSamples) > 0 {
		p("\nFirst errors:\n\n")
		for _, e := range l.errorSamples {
			p("- `%s`\n", e)
		}
	}
	p("\n")
}

func blobSizesText() string {
	var parts []string
	for _, s := range loadLayerSizes {
		parts = append(parts, fmt.Sprintf("%d KiB", s>>10))
	}
	return strings.Join(parts, ", ")
}

func perClientText(pc map[int]int) string {
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(pc)) {
		parts = append(parts, fmt.Sprintf("%d GETs with %d client(s)", pc[c], c))
	}
	return strings.Join(parts, ", ")
}

// s3Targets are issue 10's targets for S3 storage, measurement (7).
func (r *results) s3Targets() []target {
	s := r.s3
	if s == nil {
		return nil
	}
	var out []target
	for _, c := range slices.Sorted(maps.Keys(s.throughput)) {
		pb, direct := s.throughput[c][srvPullbrokerS3], s.throughput[c][srvS3Direct]
		ratio := pairedRatio(pb, direct)
		t := target{goal: fmt.Sprintf("S3, cached %s blob, %d client(s): at least 0.8× a signed GET from the S3 server", mib(s.blobSize), c), met: ratio >= 0.8}
		t.detail = fmt.Sprintf("%.2f×, median of per-round ratios (medians: %s and %s)", ratio, rate(median(pb)), rate(median(direct)))
		if !t.met {
			t.detail += fmt.Sprintf("; missed by %.2f", 0.8-ratio)
		}
		if relay := s.throughput[c][srvS3Relay]; len(relay) > 0 {
			t.detail += fmt.Sprintf("; a bare TCP relay in front of the server, the least any proxy costs, gets %.2f× the signed GET, and pullbroker %.2f× the relay",
				pairedRatio(relay, direct), pairedRatio(pb, relay))
		}
		out = append(out, t)
	}
	onS3, onFS := s.rates(headS3RecordCache), s.rates(headFSRecordCache)
	if len(onS3) > 0 && len(onFS) > 0 {
		ratio := pairedRatio(onS3, onFS)
		t := target{goal: "S3, pinned-tag HEADs: at least 0.8× the rate on the filesystem", met: ratio >= 0.8}
		t.detail = fmt.Sprintf("%.2f×, median of per-round ratios (medians: %.0f and %.0f req/s; recordCacheTTL %s on both)", ratio, median(onS3), median(onFS), s.recordCacheTTL)
		if !t.met {
			t.detail += fmt.Sprintf("; missed by %.2f", 0.8-ratio)
		}
		out = append(out, t)
		var reads int64
		var heads int
		for _, h := range s.head {
			if h.name == headS3RecordCache {
				reads += h.storage.cacheReads()
				heads += h.requests
			}
		}
		out = append(out, target{
			goal:   "S3, pinned-tag HEADs after warm-up: zero object-storage reads",
			met:    reads == 0,
			detail: fmt.Sprintf("%d reads for %d HEADs (%.2f per 1,000)", reads, heads, float64(reads)*1000/float64(max(heads, 1))),
		})
	}
	return out
}

// scaleTargets are issue 10's targets for a large index, measurement (8).
func (r *results) scaleTargets() []target {
	s := r.scale
	if s == nil {
		return nil
	}
	var out []target
	for _, run := range s.runs {
		n := run.objects
		what := fmt.Sprintf("scale, %s, %d objects", run.storage, n)
		allowed := rssAllowance(n)
		t := target{goal: what + ": peak RSS at most 64 MiB + 100 bytes per object", met: run.rssPeak <= allowed}
		t.detail = fmt.Sprintf("%s against %s (%.0f bytes per object above the small cache's %s)",
			mib(run.rssPeak), mib(allowed), float64(run.rssPeak-run.rssSmall)/float64(n), mib(run.rssSmall))
		if !t.met {
			t.detail += fmt.Sprintf("; %s over", mib(run.rssPeak-allowed))
		}
		out = append(out, t)
		out = append(out, target{
			goal:   what + ": /v2/ answers within 1 s of the start",
			met:    run.ready < time.Second,
			detail: fmt.Sprintf("after %s", run.ready.Round(time.Millisecond)),
		})
		t = target{goal: what + ": accounting done within 60 s of the start", met: run.accountingDone() && run.accounted <= time.Minute}
		if run.accountingDone() {
			t.detail = fmt.Sprintf("%s gauge reached %d after %s", objectsGauge, n, run.accounted.Round(100*time.Millisecond))
		} else {
			t.detail = fmt.Sprintf("%s gauge at %d of %d after %s, when the harness stopped waiting", objectsGauge, run.counted, n, run.accounted.Round(time.Second))
		}
		out = append(out, t)
		ratio := pairedRatio(run.headLarge, run.headSmall)
		t = target{goal: what + ": pinned-tag HEADs at least 0.8× the rate over a small cache", met: ratio >= 0.8}
		t.detail = fmt.Sprintf("%.2f×, median of per-round ratios (medians: %.0f and %.0f req/s)", ratio, median(run.headLarge), median(run.headSmall))
		if !t.met {
			t.detail += fmt.Sprintf("; missed by %.2f", 0.8-ratio)
		}
		out = append(out, t)
	}
	return out
}

func (r *results) writeS3(p func(format string, args ...any)) {
	s := r.s3
	p("## (7) S3 storage\n\n")
	p("versitygw (posix backend, as the tests start it) on 127.0.0.1 is the S3 server; pullbroker reaches\n")
	p("it through distribution's `s3-aws` driver (path-style). Object-storage requests are the lines of\n")
	p("versitygw's access log written during a phase.\n\n")
	p("**Cached blob GETs.** One %s blob, filled into the bucket by a first GET through pullbroker, then\n", mib(s.blobSize))
	p("GET by concurrent keep-alive clients (each client %s) from pullbroker, which\n", perClientText(s.perClient))
	p("streams it from the bucket, and straight from versitygw with a signed URL of the same object (what\n")
	p("`storage.redirect` hands out); %d round(s), the order rotated every round.\n\n", s.rounds)
	p("The third source is the same signed GET through a bare TCP relay (a process that copies bytes between\n")
	p("two sockets, spliced, and parses nothing): on loopback every hop costs the kernel a second TCP\n")
	p("transfer of every byte on the same two cores, so the relay is the ceiling of any proxy here.\n\n")
	p("| clients | %s | %s | %s | pullbroker / direct | relay / direct | pullbroker / relay |\n|---|---|---|---|---|---|---|\n", srvS3Direct, srvS3Relay, srvPullbrokerS3)
	for _, c := range slices.Sorted(maps.Keys(s.throughput)) {
		pb, direct, relay := s.throughput[c][srvPullbrokerS3], s.throughput[c][srvS3Direct], s.throughput[c][srvS3Relay]
		p("| %d | %s | %s | %s | %.2f | %.2f | %.2f |\n", c, rate(median(direct)), rate(median(relay)), rate(median(pb)),
			pairedRatio(pb, direct), pairedRatio(relay, direct), pairedRatio(pb, relay))
	}
	p("\n**Pinned-tag HEADs.** %d concurrent keep-alive clients HEAD a pinned tag after a warm-up HEAD that\n", s.headWorkers)
	p("pinned it, on S3 and on the filesystem with the same configuration (`storage.recordCacheTTL` %s,\n", s.recordCacheTTL)
	p("longer than the phase, so a read here is one the record cache did not spare; a shorter TTL adds\n")
	p("about three reads per pinned tag per TTL, whatever the traffic), alternating for %d round(s); then\n", s.headRounds)
	p("once on S3 without the record cache, for what each HEAD costs without it. Reads are GETs, HEADs and\n")
	p("listings of cache objects; requests on `cluster/` (the replicas' lease and journal, paced by time) and\n")
	p("on `uploads/` (the temporary copy every write makes, which the S3 driver looks at and lists to move\n")
	p("and delete it; the write itself shows as a PutObject and a CopyObject) are shown apart.\n\n")
	p("| storage | requests | req/s | object-storage reads | reads per 1,000 | requests by operation | of which on cluster/ or uploads/ | upstream requests |\n|---|---|---|---|---|---|---|---|\n")
	for _, h := range s.head {
		p("| %s | %d | %.0f | %d | %.1f | %s | %s | %d |\n", h.name, h.requests, h.rate, h.storage.cacheReads(),
			float64(h.storage.cacheReads())*1000/float64(max(h.requests, 1)), opsText(h.storage.all), opsText(h.storage.bookkeeping), h.upstream)
	}
	p("\n")
}

func opsText(ops s3Ops) string {
	var parts []string
	for _, op := range slices.Sorted(maps.Keys(ops)) {
		parts = append(parts, fmt.Sprintf("%s %d", op, ops[op]))
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, ", ")
}

func (r *results) writeScale(p func(format string, args ...any)) {
	s := r.scale
	c := s.cache
	p("## (8) A large cache: start, accounting, memory, HEADs\n\n")
	p("%d blobs, and %d repositories each with one manifest (of two of those blobs), links and %d tag\n", c.blobs, c.repos, tagsPerRepo)
	p("records (%d in all), written by the harness straight into storage in pullbroker's layout: files\n", c.tags)
	p("under the filesystem driver's root, and files in versitygw's bucket folder (its posix backend serves\n")
	p("a file as the object at its key). Then pullbroker starts on it. Ready: from starting the process to\n")
	p("`/v2/` answering. Accounted: until `%s` on `/metrics` reaches the %d objects\n", objectsGauge, c.objects())
	p("(blobs and manifests). Peak RSS: VmHWM of the process, when accounting was done and at the end. HEADs:\n")
	p("%d clients on a pinned tag, against a pullbroker with the same configuration over a small cache (one\n", s.headWorkers)
	p("image), alternating for %d round(s), after accounting. On S3, `storage.recordCacheTTL` is %s; on the\n", s.headRounds, s.recordCacheTTL)
	p("filesystem the default (0).\n\n")
	p("Writing the synthetic cache took %s; it was written once, for the filesystem run, then moved into\n", s.writeTime.Round(time.Second))
	p("the bucket's folder for the S3 run (with the HEAD image the filesystem run had stored in it).\n\n")
	p("| storage | objects | ready | accounted | peak RSS when accounted | peak RSS | allowance | small cache's peak RSS | HEAD req/s, large | HEAD req/s, small | large / small |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range s.runs {
		accounted := run.accounted.Round(100 * time.Millisecond).String()
		if !run.accountingDone() {
			accounted = fmt.Sprintf("not done: %d of %d after %s", run.counted, run.objects, run.accounted.Round(time.Second))
		}
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %.2f |\n", run.storage, run.objects,
			run.ready.Round(time.Millisecond), accounted, mib(run.rssAccounted), mib(run.rssPeak), mib(rssAllowance(run.objects)),
			mib(run.rssSmall), median(run.headLarge), median(run.headSmall), pairedRatio(run.headLarge, run.headSmall))
	}
	p("\n")
}

// peersTTFBSlack is how much later than through its owner the first byte
// of a cold blob may come through another replica (issue 11).
const peersTTFBSlack = 2 * time.Millisecond

// peersTargets are issue 11's targets, measurement (9).
func (r *results) peersTargets() []target {
	pr := r.peers
	if pr == nil || len(pr.rounds) == 0 {
		return nil
	}
	var out []target
	worst := 0.0
	for _, rows := range pr.rounds {
		worst = max(worst, rows[peersThree].ratio)
	}
	out = append(out, target{
		goal:   fmt.Sprintf("peers, %d replicas, %d cold clients: upstream bytes ÷ image = 1.00", pr.replicas, pr.clients),
		met:    worst <= 1.001,
		detail: fmt.Sprintf("%.3f in the worst of %d round(s)", worst, len(pr.rounds)),
	})
	ratio := median(pr.wallRatios())
	t := target{goal: fmt.Sprintf("peers, %d replicas, %d cold clients: wall time at most 1.3× one replica serving all", pr.replicas, pr.clients), met: ratio <= 1.3}
	t.detail = fmt.Sprintf("%.2f×, median of per-round ratios", ratio)
	if !t.met {
		t.detail += fmt.Sprintf("; missed by %.2f", ratio-1.3)
	}
	out = append(out, t)
	if len(pr.ttfbOwner) > 0 && len(pr.ttfbNonOwner) > 0 {
		owner, other := medianDuration(pr.ttfbOwner), medianDuration(pr.ttfbNonOwner)
		t := target{goal: "peers, cold blob: first byte through a non-owner at most 2 ms after the owner's (medians)", met: other-owner <= peersTTFBSlack}
		t.detail = fmt.Sprintf("%+.1f ms (%s through another replica, %s through the owner)", float64(other-owner)/float64(time.Millisecond), ms(other), ms(owner))
		out = append(out, t)
	}
	return out
}

func (r *results) writePeers(p func(format string, args ...any)) {
	pr := r.peers
	p("## (9) Replicas with peers\n\n")
	p("%d pullbrokers on one versitygw bucket with a static `cluster.peers` list (each its own peer listener,\n", pr.replicas)
	p("a shared token), against one pullbroker on a bucket of its own without peers; all with\n")
	p("`storage.recordCacheTTL` %s, in front of the counting proxy. Each round, an image of %d layers of %s\n", peersRecordCacheTTL, pr.layers, mib(pr.layerSize))
	p("(%d bytes with manifest and config) that neither cache holds is pulled by %d clients at once as in\n", pr.image, pr.clients)
	p("(3): through the one replica, and spread over the %d (client i through replica i mod %d), in an\n", pr.replicas, pr.replicas)
	p("order swapped every round. Upstream bytes are manifest and blob response body bytes.\n\n")
	p("| round | pull | wall time | upstream bytes | upstream / image size | upstream blob requests |\n|---|---|---|---|---|---|\n")
	for i, rows := range pr.rounds {
		for _, name := range []string{peersSingle, peersThree} {
			c := rows[name]
			p("| %d | %s | %s | %d | %.3f | %d |\n", i+1, name, c.wall.Round(time.Millisecond), c.upstreamBytes, c.ratio, c.blobRequests)
		}
	}
	var parts []string
	for _, x := range pr.wallRatios() {
		parts = append(parts, fmt.Sprintf("%.2f", x))
	}
	p("\nWall time of the replicas ÷ the one replica's, per round: %s.\n\n", strings.Join(parts, ", "))
	p("**Time to first byte of a cold blob.** After the image's manifest, %d blobs of %s that no replica\n", len(pr.ttfbOwner)+len(pr.ttfbNonOwner), mib(pr.ttfbLayerSize))
	p("holds, GET one after the other, alternately through the blob's owner (which fills it from the upstream)\n")
	p("and through another replica (which streams it from the owner while the owner fills it).\n\n")
	p("| through | blobs | median | min | max |\n|---|---|---|---|---|\n")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{{"the owner", pr.ttfbOwner}, {"another replica", pr.ttfbNonOwner}} {
		if len(row.ds) == 0 {
			continue
		}
		p("| %s | %d | %s | %s | %s |\n", row.name, len(row.ds), ms(medianDuration(row.ds)), ms(slices.Min(row.ds)), ms(slices.Max(row.ds)))
	}
	p("\n")
}
