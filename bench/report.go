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
}

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
	as, bs := r.throughput[clients][a], r.throughput[clients][b]
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
	return out
}

func (r *results) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	m := r.machine
	p("# Benchmark: pullbroker against distribution's pull-through proxy\n\n")
	p("Written by `go run ./bench` (see [README.md](README.md)) on %s. All traffic on 127.0.0.1; one upstream\n", m.Date.UTC().Format("2006-01-02 15:04 MST"))
	if r.only == "" {
		p("(distribution `registry`, filesystem storage) behind a counting reverse proxy, with pullbroker and\n")
		p("distribution's proxy (`proxy.remoteurl`) both in front of it, each with an empty filesystem cache\n")
		p("at the start. Ratios compare numbers measured in this same run.\n\n")
	} else {
		p("(distribution `registry`, filesystem storage) behind a counting reverse proxy, with pullbroker in\n")
		p("front of it, its filesystem cache empty at the start.\n\n")
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
