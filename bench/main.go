// Command bench measures pullbroker against distribution's pull-through
// proxy on this machine, all on 127.0.0.1, and writes bench/RESULTS.md.
//
//	go run ./bench              # the numbers of record (about 4 min, plus the registry build once)
//	go run ./bench -quick       # small sizes, one round: checks the harness itself
//	go run ./bench -only load   # measurement (6) alone; also -only s3, -only scale, -only peers
//
// It builds pullbroker from this checkout and distribution v3.1.2's
// registry (cached under ~/.cache/pullbroker-test/), starts an upstream
// registry, a counting reverse proxy in front of it, and both proxies in
// front of that, then runs the five measurements of issue 6, the load
// test of issue 12, the S3 and index-scale measurements of issue 10, and
// the replicas with peers of issue 11.
// See README.md.
package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

const registryVersion = "v3.1.2"

type options struct {
	out, results  string
	quick         bool
	pullbrokerBin string
	// only is "" (every measurement) or one of onlyChoices.
	only string
	// scaleBlobs and scaleTags size measurement (8): the synthetic blobs
	// and tag records written into storage before pullbroker starts.
	scaleBlobs, scaleTags int
}

// onlyChoices are the measurements -only runs alone.
var onlyChoices = []string{onlyLoad, onlyS3, onlyScale, onlyPeers}

const (
	onlyLoad  = "load"  // (6) load over cached content
	onlyS3    = "s3"    // (7) S3 storage: cached blob GETs and pinned-tag HEADs
	onlyScale = "scale" // (8) a large index: start-up, accounting, memory, HEADs
	onlyPeers = "peers" // (9) three replicas with peers against one: cold pulls, TTFB
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "fileserver":
			runFileServer(os.Args[2:])
			return
		case "countproxy":
			runCountProxy(os.Args[2:])
			return
		}
	}
	root, err := moduleRoot()
	if err != nil {
		log.Fatal(err)
	}
	var o options
	flag.StringVar(&o.out, "out", filepath.Join(root, "bench", "out"), "working directory for binaries, data, caches and logs")
	flag.StringVar(&o.results, "results", filepath.Join(root, "bench", "RESULTS.md"), "where to write the report")
	flag.BoolVar(&o.quick, "quick", false, "small sizes and one round, to check the harness (writes RESULTS-quick.md unless -results is given)")
	flag.StringVar(&o.pullbrokerBin, "pullbroker", "", "use this pullbroker binary instead of building ./cmd/pullbroker")
	flag.StringVar(&o.only, "only", "", `run one measurement alone: "load" (6), "s3" (7), "scale" (8) or "peers" (9) (writes RESULTS-<name>.md unless -results is given)`)
	flag.IntVar(&o.scaleBlobs, "scale-blobs", 0, "blobs written into storage for measurement (8) (default 1000000, with -quick 50000)")
	flag.IntVar(&o.scaleTags, "scale-tags", 0, "tag records written into storage for measurement (8) (default a tenth of -scale-blobs)")
	flag.Parse()
	if o.only != "" && !slices.Contains(onlyChoices, o.only) {
		log.Fatalf("-only %q: the measurements that run alone are %s", o.only, strings.Join(onlyChoices, ", "))
	}
	if o.scaleBlobs < 0 || o.scaleTags < 0 {
		log.Fatalf("-scale-blobs and -scale-tags must not be negative")
	}
	// Anything but the full run writes beside the working files, so that
	// RESULTS.md keeps the numbers of record.
	if name := resultsName(o); name != "RESULTS" && !flagSet("results") {
		o.results = filepath.Join(root, "bench", "out", name+".md")
	}
	log.SetFlags(log.Ltime)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, root, o); err != nil {
		log.Fatal(err)
	}
}

// resultsName is the report's file name without .md: RESULTS, or
// RESULTS-quick, RESULTS-load, RESULTS-quick-load.
func resultsName(o options) string {
	name := "RESULTS"
	if o.quick {
		name += "-quick"
	}
	if o.only != "" {
		name += "-" + o.only
	}
	return name
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the benchmark from inside the pullbroker module")
	}
	return filepath.Dir(mod), nil
}

// sizes of one run.
type sizes struct {
	big                   int64
	coldLayers            int
	coldLayer             int64
	ttfbLayers            int
	ttfbLayer             int64
	coldClients           int
	headWorkers, headReqs int
	headMax               time.Duration
	rounds                int
	perClient             map[int]int
	// Measurement (6): loadClients clients for loadDuration, or until
	// loadMaxRequests requests were sent.
	loadClients     int
	loadDuration    time.Duration
	loadMaxRequests int
	// Measurement (7): an s3Blob-byte blob GET in s3Rounds rounds (with
	// perClient GETs), pinned-tag HEADs in headRounds rounds.
	s3Blob     int64
	s3Rounds   int
	headRounds int
	// Measurement (8): see options.
	scaleBlobs, scaleTags int
	// Measurement (9): cold pulls of coldClients clients in peerRounds
	// rounds, each of a new image of coldLayers coldLayer-byte layers;
	// then peerTTFBBlobs cold blobs of peerTTFBSize bytes through their
	// owner and as many through another replica.
	peerRounds, peerTTFBBlobs int
	peerTTFBSize              int64
}

func sizesFor(o options) sizes {
	sz := baseSizes(o.quick)
	if o.scaleBlobs > 0 {
		sz.scaleBlobs = o.scaleBlobs
		sz.scaleTags = max(o.scaleBlobs/10, 1)
	}
	if o.scaleTags > 0 {
		sz.scaleTags = o.scaleTags
	}
	return sz
}

func baseSizes(quick bool) sizes {
	if quick {
		return sizes{
			big: 32 << 20, coldLayers: 3, coldLayer: 8 << 20, ttfbLayers: 3, ttfbLayer: 4 << 20,
			coldClients: 32, headWorkers: 16, headReqs: 2000, headMax: 10 * time.Second, rounds: 1,
			perClient:   map[int]int{1: 2, 8: 1},
			loadClients: 50, loadDuration: 5 * time.Second, loadMaxRequests: 200_000,
			s3Blob: 50 << 20, s3Rounds: 1, headRounds: 1,
			scaleBlobs: 50_000, scaleTags: 5_000,
			peerRounds: 1, peerTTFBBlobs: 3, peerTTFBSize: 4 << 20,
		}
	}
	return sizes{
		big: 256 << 20, coldLayers: 3, coldLayer: 50 << 20, ttfbLayers: 5, ttfbLayer: 32 << 20,
		coldClients: 32, headWorkers: 32, headReqs: 20000, headMax: 20 * time.Second, rounds: 7,
		perClient:   map[int]int{1: 6, 8: 2},
		loadClients: 500, loadDuration: 60 * time.Second, loadMaxRequests: 5_000_000,
		s3Blob: 50 << 20, s3Rounds: 5, headRounds: 3,
		scaleBlobs: 1_000_000, scaleTags: 100_000,
		peerRounds: 7, peerTTFBBlobs: 100, peerTTFBSize: 8 << 20,
	}
}

type env struct {
	o      options
	root   string
	dirs   map[string]string
	procs  []*proc
	self   string // the harness binary, re-executed for its helper servers
	regBin string // distribution's registry
	pbBin  string // pullbroker
	upHost string // the upstream's host:port
	counts string // base URL of the counting proxy
	pb     *proc
	pbURL  string
	// headPushed: the image of the HEAD measurements is in the upstream.
	headPushed bool
	// s3srv is versitygw, once a measurement started it.
	s3srv *s3Server
}

func (e *env) start(name, bin string, args []string, env ...string) (*proc, error) {
	p, err := startProc(name, e.dirs["logs"], bin, args, env...)
	if err != nil {
		return nil, err
	}
	e.procs = append(e.procs, p)
	return p, nil
}

func (e *env) stopAll() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop()
	}
}

// freshDir empties (or makes) the working folder name under the output
// folder and returns its path.
func (e *env) freshDir(name string) (string, error) {
	p := filepath.Join(e.o.out, name)
	if err := os.RemoveAll(p); err != nil {
		return "", err
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	e.dirs[name] = p
	return p, nil
}

// runs reports whether the measurement runs: all do unless -only names one.
func (o options) runs(measurement string) bool { return o.only == "" || o.only == measurement }

func run(ctx context.Context, root string, o options) error {
	sz := sizesFor(o)
	e := &env{o: o, root: root, dirs: map[string]string{}}
	// Only the folders the harness makes are emptied: the caches start cold.
	for _, d := range []string{"bin", "data", "logs", "upstream-data", "pullbroker-data", "distribution-data", "spool", "s3"} {
		if _, err := e.freshDir(d); err != nil {
			return err
		}
	}
	defer e.stopAll()

	r := &results{
		quick: o.quick, only: o.only, bigSize: sz.big, coldLayers: sz.coldLayers, coldLayerSize: sz.coldLayer,
		coldClients: sz.coldClients, ttfbLayerSize: sz.ttfbLayer, ttfbLayers: sz.ttfbLayers,
		headWorkers: sz.headWorkers, rounds: sz.rounds, perClient: sz.perClient,
		throughput: map[int]map[string][]float64{}, ttfb: map[string][]time.Duration{},
		rss: map[string]map[string]int64{srvPullbroker: {}, srvDistribution: {}}, coldFill: map[string]time.Duration{},
	}
	r.machine = describeMachine()

	pbBin, err := e.buildPullbroker(ctx)
	if err != nil {
		return err
	}
	e.pbBin = pbBin
	if o.pullbrokerBin != "" {
		r.machine.Pullbroker = binaryRevision(pbBin) + " (given with -pullbroker)"
	} else {
		r.machine.Pullbroker = checkoutRevision(root)
	}
	e.regBin, err = ensureRegistry(ctx)
	if err != nil {
		return err
	}
	r.machine.Registry = "distribution " + registryVersion + " (`registry`, built with " + runtime.Version() + ")"
	if e.self, err = os.Executable(); err != nil {
		return err
	}
	if err := e.startUpstream(ctx); err != nil {
		return err
	}
	// The pullbroker of (1) to (6).
	if o.runs(onlyLoad) {
		if err := e.startPullbroker(ctx); err != nil {
			return err
		}
	}
	if o.only == "" {
		if err := e.compare(ctx, r, sz); err != nil {
			return err
		}
	}
	// (7) S3 storage, with pullbrokers of their own.
	if o.runs(onlyS3) {
		if err := e.s3(ctx, r, sz); err != nil {
			return err
		}
	}
	// (9) Replicas with peers, with pullbrokers of their own on S3.
	if o.runs(onlyPeers) {
		if err := e.peers(ctx, r, sz); err != nil {
			return err
		}
	}
	// (6) Many clients over cached content, after (1) to (5): it leaves
	// pullbroker's memory and connections as they are after a busy minute.
	if o.runs(onlyLoad) {
		if err := e.cachedLoad(ctx, r, sz); err != nil {
			return err
		}
	}
	// (8) A large index, last: writing it keeps the disk busy for minutes.
	if o.runs(onlyScale) {
		if err := e.scale(ctx, r, sz); err != nil {
			return err
		}
	}

	e.stopAll()
	r.machine.LoadEnd = loadAverage()
	var buf bytes.Buffer
	r.write(&buf)
	buf.Write(nodeSection(o.results))
	if err := os.WriteFile(o.results, buf.Bytes(), 0o644); err != nil {
		return err
	}
	os.Stdout.Write(buf.Bytes())
	log.Printf("wrote %s", o.results)
	return nil
}

// startUpstream starts the upstream registry and the counting proxy in
// front of it.
func (e *env) startUpstream(ctx context.Context) error {
	upPort, err := freePort()
	if err != nil {
		return err
	}
	upCfg := filepath.Join(e.o.out, "upstream.yml")
	if err := os.WriteFile(upCfg, []byte(distributionConfig(upPort, e.dirs["upstream-data"], "", "warn")), 0o644); err != nil {
		return err
	}
	up, err := e.start("upstream", e.regBin, []string{"serve", upCfg}, "OTEL_TRACES_EXPORTER=none")
	if err != nil {
		return err
	}
	upURL := fmt.Sprintf("http://127.0.0.1:%d", upPort)
	if err := waitHTTP(ctx, up, upURL+"/v2/"); err != nil {
		return err
	}
	e.upHost = fmt.Sprintf("127.0.0.1:%d", upPort)

	countPort, err := freePort()
	if err != nil {
		return err
	}
	counter, err := e.start("countproxy", e.self, []string{"countproxy", "-listen", fmt.Sprintf("127.0.0.1:%d", countPort), "-target", upURL})
	if err != nil {
		return err
	}
	e.counts = fmt.Sprintf("http://127.0.0.1:%d", countPort)
	return waitHTTP(ctx, counter, e.counts+"/__bench/stats")
}

// pbInstance is a pullbroker the harness started.
type pbInstance struct {
	p        *proc
	url      string // the registry listener
	adminURL string
	started  time.Time // just before the process was started
}

// startPullbroker starts the pullbroker of measurements (1) to (6), on the
// filesystem, in front of the counting proxy.
func (e *env) startPullbroker(ctx context.Context) error {
	pb, err := e.launchPullbroker("pullbroker", filesystemStorage(e.dirs["pullbroker-data"], 0))
	if err != nil {
		return err
	}
	e.pb, e.pbURL = pb.p, pb.url
	return pb.waitReady(ctx)
}

// launchPullbroker starts a pullbroker named name (its config and log are
// named after it) with the given storage section, in front of the
// counting proxy, and returns without waiting for it.
func (e *env) launchPullbroker(name, storage string) (*pbInstance, error) {
	port, admin := mustPort(), mustPort()
	cfg := filepath.Join(e.o.out, name+".yaml")
	if err := os.WriteFile(cfg, []byte(pullbrokerConfig(port, admin, storage, e.counts)), 0o644); err != nil {
		return nil, err
	}
	started := time.Now()
	p, err := e.start(name, e.pbBin, []string{"serve", "--config", cfg})
	if err != nil {
		return nil, err
	}
	return &pbInstance{p: p, url: fmt.Sprintf("http://127.0.0.1:%d", port), adminURL: fmt.Sprintf("http://127.0.0.1:%d", admin), started: started}, nil
}

// waitReady waits until pullbroker's /readyz answers.
func (pb *pbInstance) waitReady(ctx context.Context) error {
	return waitHTTP(ctx, pb.p, pb.adminURL+"/readyz")
}

// compare runs measurements (1) to (5): pullbroker against distribution's
// proxy, both in front of the counting proxy.
func (e *env) compare(ctx context.Context, r *results, sz sizes) error {
	pb, pbURL := e.pb, e.pbURL
	// Test data: seeded pseudo-random layers.
	log.Printf("writing test data to %s", e.dirs["data"])
	mk := func(name string, size int64, seed uint64) (*fileLayer, error) {
		return randomFile(filepath.Join(e.dirs["data"], name), size, seed)
	}
	big, err := mk("big", sz.big, 1)
	if err != nil {
		return err
	}
	var coldLayers, ttfbLayers []*fileLayer
	for i := range sz.coldLayers {
		l, err := mk(fmt.Sprintf("cold-%d", i), sz.coldLayer, uint64(10+i))
		if err != nil {
			return err
		}
		coldLayers = append(coldLayers, l)
	}
	for i := range sz.ttfbLayers {
		l, err := mk(fmt.Sprintf("ttfb-%d", i), sz.ttfbLayer, uint64(20+i))
		if err != nil {
			return err
		}
		ttfbLayers = append(ttfbLayers, l)
	}

	log.Printf("pushing the test images to the upstream")
	upHost := e.upHost
	bigImg, err := pushImage(ctx, upHost, "bench/big", []string{"v1"}, []*fileLayer{big})
	if err != nil {
		return err
	}
	coldImg, err := pushImage(ctx, upHost, "bench/cold", []string{"v1"}, coldLayers)
	if err != nil {
		return err
	}
	r.coldImage = coldImg.total
	ttfbImg, err := pushImage(ctx, upHost, "bench/ttfb", []string{"v1"}, ttfbLayers)
	if err != nil {
		return err
	}
	if err := e.headImage(ctx); err != nil {
		return err
	}

	// distribution's proxy, the reference.
	distPort := mustPort()
	distCfg := filepath.Join(e.o.out, "distribution-proxy.yml")
	if err := os.WriteFile(distCfg, []byte(distributionConfig(distPort, e.dirs["distribution-data"], e.counts, "info")), 0o644); err != nil {
		return err
	}
	dist, err := e.start("distribution-proxy", e.regBin, []string{"serve", distCfg}, "OTEL_TRACES_EXPORTER=none")
	if err != nil {
		return err
	}
	distURL := fmt.Sprintf("http://127.0.0.1:%d", distPort)
	if err := waitHTTP(ctx, dist, distURL+"/v2/"); err != nil {
		return err
	}
	proxies := []struct {
		name string
		url  string
		p    *proc
	}{{srvPullbroker, pbURL, pb}, {srvDistribution, distURL, dist}}

	// (5) Time to first byte of cold blobs, before anything is warm; the
	// upstream itself (through the counting proxy, as the proxies reach
	// it) for reference.
	ds, err := coldTTFB(withAuth(ctx, "Bearer "+benchToken), e.counts, ttfbImg)
	if err != nil {
		return fmt.Errorf("(5) upstream: %w", err)
	}
	r.ttfb[srvUpstream] = ds
	for _, px := range proxies {
		log.Printf("(5) cold TTFB through %s", px.name)
		w := watchRSS(px.p.pid())
		ds, err := coldTTFB(ctx, px.url, ttfbImg)
		r.rss[px.name][phaseFillTTFB] = w.peakBytes()
		if err != nil {
			return fmt.Errorf("(5) %s: %w", px.name, err)
		}
		r.ttfb[px.name] = ds
	}

	// The big blob's first, cold GET fills each cache.
	for _, px := range proxies {
		log.Printf("cold GET of the %s blob through %s", mib(sz.big), px.name)
		c := newClient(1)
		if _, err := getManifest(ctx, c, px.url, bigImg.repo, bigImg.tag); err != nil {
			return err
		}
		w := watchRSS(px.p.pid())
		start := time.Now()
		err := getBlob(ctx, c, blobURL(px.url, bigImg.repo, big.digest.String()), big.size, big.digest.String(), true)
		r.coldFill[px.name] = time.Since(start)
		r.rss[px.name][phaseFillBig] = w.peakBytes()
		c.CloseIdleConnections()
		if err != nil {
			return fmt.Errorf("cold GET through %s: %w", px.name, err)
		}
	}

	// (1) Cached throughput against the sendfile ceiling on pullbroker's
	// own copy of the blob.
	cachedFile := blobFile(e.dirs["pullbroker-data"], big.digest.Hex)
	if _, err := os.Stat(cachedFile); err != nil {
		return fmt.Errorf("pullbroker's cached copy of the big blob: %w", err)
	}
	filePort := mustPort()
	fsrv, err := e.start("fileserver", e.self, []string{"fileserver", "-listen", fmt.Sprintf("127.0.0.1:%d", filePort), "-file", cachedFile})
	if err != nil {
		return err
	}
	fileURL := fmt.Sprintf("http://127.0.0.1:%d/blob", filePort)
	if err := waitHTTP(ctx, fsrv, fileURL); err != nil {
		return err
	}
	servers := []struct{ name, url string }{
		{srvSendfile, fileURL},
		{srvPullbroker, blobURL(pbURL, bigImg.repo, big.digest.String())},
		{srvDistribution, blobURL(distURL, bigImg.repo, big.digest.String())},
	}
	watches := map[string]*rssWatch{srvPullbroker: watchRSS(pb.pid()), srvDistribution: watchRSS(dist.pid())}
	for round := range sz.rounds {
		for _, clients := range []int{1, 8} {
			if r.throughput[clients] == nil {
				r.throughput[clients] = map[string][]float64{}
			}
			for i := range servers {
				s := servers[(i+round)%len(servers)] // rotate who goes first
				log.Printf("(1) round %d: %d client(s) from %s", round+1, clients, s.name)
				bps, err := throughput(ctx, s.url, sz.big, clients, sz.perClient[clients])
				if err != nil {
					return fmt.Errorf("(1) %s: %w", s.name, err)
				}
				r.throughput[clients][s.name] = append(r.throughput[clients][s.name], bps)
			}
		}
	}
	for name, w := range watches {
		r.rss[name][phaseCached] = w.peakBytes()
	}

	// (2) Manifest HEAD by tag.
	heads := []struct {
		name, server, url string
		p                 *proc
	}{
		{headPinned, srvPullbroker, manifestURL(pbURL, "bench/head", "pinned"), pb},
		{headTTL, srvPullbroker, manifestURL(pbURL, "bench/head", "ttl"), pb},
		{headDist, srvDistribution, manifestURL(distURL, "bench/head", "plain"), dist},
	}
	headRSS := map[string]int64{}
	for _, h := range heads {
		log.Printf("(2) HEADs: %s", h.name)
		if _, err := headLoad(ctx, h.url, 1, 1, time.Minute); err != nil { // resolves (and pins) the tag
			return err
		}
		if err := e.resetCounts(ctx); err != nil {
			return err
		}
		w := watchRSS(h.p.pid())
		res, err := headLoad(ctx, h.url, sz.headWorkers, sz.headReqs, sz.headMax)
		headRSS[h.server] = max(headRSS[h.server], w.peakBytes())
		if err != nil {
			return fmt.Errorf("(2) %s: %w", h.name, err)
		}
		st, err := e.stats(ctx)
		if err != nil {
			return err
		}
		r.head = append(r.head, headRow{
			name: h.name, server: h.server, rate: res.rate(), requests: res.requests,
			upstream: st.Requests, per1000: float64(st.Requests) * 1000 / float64(res.requests), byMethod: st.ByMethod,
			elapsedSec: res.elapsed.Seconds(),
		})
	}
	for s, v := range headRSS {
		r.rss[s][phaseHead] = v
	}

	// (3) Cold pull by 32 clients at once.
	for _, px := range proxies {
		log.Printf("(3) cold pull by %d clients through %s", sz.coldClients, px.name)
		if err := e.resetCounts(ctx); err != nil {
			return err
		}
		w := watchRSS(px.p.pid())
		wall, err := coldPull(ctx, []string{px.url}, coldImg, sz.coldClients, 1)
		r.rss[px.name][phaseCold] = w.peakBytes()
		if err != nil {
			return fmt.Errorf("(3) %s: %w", px.name, err)
		}
		st, err := e.stats(ctx)
		if err != nil {
			return err
		}
		image := st.ManifestBodyBytes + st.BlobBodyBytes
		r.cold = append(r.cold, coldRow{
			server: px.name, wall: wall, upstreamBytes: image, blobRequests: st.BlobReqs,
			ratio: float64(image) / float64(coldImg.total),
		})
	}
	return nil
}

// nodeSectionHeading starts the section of RESULTS.md that the e2e node test
// (TestKubeletPullsThroughPullbroker) measures rather than this harness: a new report keeps it.
const nodeSectionHeading = "## Always pulls on a real node"

// nodeSection is that section of the report at path, from its heading to the end; nil if absent.
func nodeSection(path string) []byte {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if i := bytes.Index(old, []byte("\n"+nodeSectionHeading)); i >= 0 {
		return old[i:]
	}
	return nil
}

func mustPort() int {
	p, err := freePort()
	if err != nil {
		log.Fatal(err)
	}
	return p
}

func (e *env) resetCounts(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.counts+"/__bench/reset", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func (e *env) stats(ctx context.Context) (upstreamStats, error) {
	var st upstreamStats
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.counts+"/__bench/stats", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (e *env) buildPullbroker(ctx context.Context) (string, error) {
	if e.o.pullbrokerBin != "" {
		return filepath.Abs(e.o.pullbrokerBin)
	}
	bin := filepath.Join(e.dirs["bin"], "pullbroker")
	log.Printf("building pullbroker")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pullbroker")
	cmd.Dir = e.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/pullbroker: %w\n%s", err, out)
	}
	return bin, nil
}

// ensureRegistry returns distribution's registry binary, building it into
// the test-tool cache the first time (about 6 minutes cold).
func ensureRegistry(ctx context.Context) (string, error) {
	cacheDir, err := testCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cacheDir, "registry-"+registryVersion)
	bin := filepath.Join(dir, "registry")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	log.Printf("building distribution %s's registry into %s (about 6 minutes the first time)", registryVersion, dir)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".registry-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "install", "github.com/distribution/distribution/v3/cmd/registry@"+registryVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-mod=mod")
	cmd.Dir = os.TempDir() // outside this module: go install pkg@version ignores go.mod anyway
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install registry@%s: %w\n%s", registryVersion, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return bin, nil
}

// testCacheDir is where the test tools are cached, as internal/testenv
// finds it: $PULLBROKER_TEST_CACHE or ~/.cache/pullbroker-test.
func testCacheDir() (string, error) {
	if dir := os.Getenv("PULLBROKER_TEST_CACHE"); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".cache", "pullbroker-test"), nil
}

// tool is the path of a test tool (versitygw) as internal/testenv finds
// it: in $PULLBROKER_TEST_TOOLS, else the cache's tools/, else $PATH.
func tool(name string) (string, error) {
	dir := os.Getenv("PULLBROKER_TEST_TOOLS")
	if dir == "" {
		cache, err := testCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "tools")
	}
	if p := filepath.Join(dir, name); isExecutable(p) {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s or $PATH: scripts/install-test-deps.sh installs it", name, dir)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// distributionConfig is a registry on 127.0.0.1:port; with remote it is a
// pull-through proxy of remote.
func distributionConfig(port int, root, remote, level string) string {
	s := fmt.Sprintf(`version: 0.1
log:
  level: %s
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
`, level, root, port)
	if remote != "" {
		s += fmt.Sprintf("proxy:\n  remoteurl: %s\n", remote)
	}
	return s
}

// pullbrokerConfig fronts one upstream, the default for bare names so that
// both proxies are asked the same paths, with the given storage section.
// Tags under bench/head named "pinned", and under bench/load named
// "pinned-*", are pinned on first resolution; others are fresh for an hour.
func pullbrokerConfig(port, admin int, storage, upstream string) string {
	return fmt.Sprintf(`listen:
  addr: 127.0.0.1:%d
admin:
  addr: 127.0.0.1:%d
%s
log:
  format: text
  level: info
disableDefaultUpstreams: true
defaultUpstream: upstream.bench
upstreams:
  - name: upstream.bench
    endpoint: %s
    tagTTL: 1h
pins:
  - registry: upstream.bench
    repository: bench/head
    tag: pinned
    policy: sticky
  - registry: upstream.bench
    repository: bench/load
    tag: pinned-*
    policy: sticky
`, port, admin, strings.TrimRight(storage, "\n"), upstream)
}

// filesystemStorage is the storage section of a pullbroker on the
// filesystem at root; recordCacheTTL 0 is the default.
func filesystemStorage(root string, recordCacheTTL time.Duration) string {
	return fmt.Sprintf(`storage:
  driver: filesystem
  recordCacheTTL: %s
  parameters:
    rootdirectory: %s
`, recordCacheTTL, root)
}

// checkoutRevision describes the working tree pullbroker was built from.
func checkoutRevision(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown revision"
	}
	rev := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		rev += " + uncommitted changes"
	}
	return rev
}

// binaryRevision is the commit a Go binary was built from, as the Go
// toolchain stamped it (go build -buildvcs=true), with "+ uncommitted
// changes" when the tree was dirty.
func binaryRevision(bin string) string {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "unknown"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "unknown revision"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		return "commit " + rev + " + uncommitted changes"
	}
	return "commit " + rev
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Date: time.Now()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		for _, line := range strings.Split(string(b), "\n") {
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				m.MemTotal = kb << 10
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadStart = loadAverage()
	return m
}

// loadAverage is /proc/loadavg's first three fields: other work on the
// machine shows up here and in the numbers.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
