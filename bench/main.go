// Command bench measures pullbroker against distribution's pull-through
// proxy on this machine, all on 127.0.0.1, and writes bench/RESULTS.md.
//
//	go run ./bench              # the numbers of record (about 4 min, plus the registry build once)
//	go run ./bench -quick       # small sizes, one round: checks the harness itself
//	go run ./bench -only load   # measurement (6) alone
//
// It builds pullbroker from this checkout and distribution v3.1.2's
// registry (cached under ~/.cache/pullbroker-test/), starts an upstream
// registry, a counting reverse proxy in front of it, and both proxies in
// front of that, then runs the five measurements of issue 6 and the load
// test of issue 12. See README.md.
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
	"strings"
	"syscall"
	"time"
)

const registryVersion = "v3.1.2"

type options struct {
	out, results  string
	quick         bool
	pullbrokerBin string
	// only is "" (every measurement) or "load" (measurement (6) alone).
	only string
}

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
	flag.StringVar(&o.only, "only", "", `"load" runs only measurement (6), the load test over cached content (writes RESULTS-load.md unless -results is given)`)
	flag.Parse()
	if o.only != "" && o.only != "load" {
		log.Fatalf("-only %q: the one measurement that runs alone is \"load\"", o.only)
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
}

func sizesFor(quick bool) sizes {
	if quick {
		return sizes{
			big: 32 << 20, coldLayers: 3, coldLayer: 8 << 20, ttfbLayers: 3, ttfbLayer: 4 << 20,
			coldClients: 32, headWorkers: 16, headReqs: 2000, headMax: 10 * time.Second, rounds: 1,
			perClient:   map[int]int{1: 2, 8: 1},
			loadClients: 50, loadDuration: 5 * time.Second, loadMaxRequests: 200_000,
		}
	}
	return sizes{
		big: 256 << 20, coldLayers: 3, coldLayer: 50 << 20, ttfbLayers: 5, ttfbLayer: 32 << 20,
		coldClients: 32, headWorkers: 32, headReqs: 20000, headMax: 20 * time.Second, rounds: 7,
		perClient:   map[int]int{1: 6, 8: 2},
		loadClients: 500, loadDuration: 60 * time.Second, loadMaxRequests: 5_000_000,
	}
}

type env struct {
	o      options
	root   string
	dirs   map[string]string
	procs  []*proc
	self   string // the harness binary, re-executed for its helper servers
	regBin string // distribution's registry
	upHost string // the upstream's host:port
	counts string // base URL of the counting proxy
	pb     *proc
	pbURL  string
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

func run(ctx context.Context, root string, o options) error {
	sz := sizesFor(o.quick)
	e := &env{o: o, root: root, dirs: map[string]string{}}
	// Only the folders the harness makes are emptied: the caches start cold.
	for _, d := range []string{"bin", "data", "logs", "upstream-data", "pullbroker-data", "distribution-data", "spool"} {
		p := filepath.Join(o.out, d)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		e.dirs[d] = p
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
	if err := e.startPullbroker(ctx, pbBin); err != nil {
		return err
	}
	if o.only == "" {
		if err := e.compare(ctx, r, sz); err != nil {
			return err
		}
	}
	// (6) Many clients over cached content, last: it leaves pullbroker's
	// memory and connections as they are after a busy minute.
	if err := e.cachedLoad(ctx, r, sz); err != nil {
		return err
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

// startPullbroker starts pullbroker in front of the counting proxy.
func (e *env) startPullbroker(ctx context.Context, bin string) error {
	pbPort, pbAdmin := mustPort(), mustPort()
	pbCfg := filepath.Join(e.o.out, "pullbroker.yaml")
	if err := os.WriteFile(pbCfg, []byte(pullbrokerConfig(pbPort, pbAdmin, e.dirs["pullbroker-data"], e.counts)), 0o644); err != nil {
		return err
	}
	pb, err := e.start("pullbroker", bin, []string{"serve", "--config", pbCfg})
	if err != nil {
		return err
	}
	e.pb, e.pbURL = pb, fmt.Sprintf("http://127.0.0.1:%d", pbPort)
	return waitHTTP(ctx, pb, fmt.Sprintf("http://127.0.0.1:%d/readyz", pbAdmin))
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
	small, err := mk("small", 4096, 30)
	if err != nil {
		return err
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
	if _, err := pushImage(ctx, upHost, "bench/head", []string{"pinned", "ttl", "plain"}, []*fileLayer{small}); err != nil {
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
		wall, err := coldPull(ctx, px.url, coldImg, sz.coldClients)
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
	cacheDir := os.Getenv("PULLBROKER_TEST_CACHE")
	if cacheDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cacheDir = filepath.Join(home, ".cache", "pullbroker-test")
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
// both proxies are asked the same paths. Tags under bench/head named
// "pinned", and under bench/load named "pinned-*", are pinned on first
// resolution; others are fresh for an hour.
func pullbrokerConfig(port, admin int, root, upstream string) string {
	return fmt.Sprintf(`listen:
  addr: 127.0.0.1:%d
admin:
  addr: 127.0.0.1:%d
storage:
  driver: filesystem
  parameters:
    rootdirectory: %s
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
`, port, admin, root, upstream)
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
