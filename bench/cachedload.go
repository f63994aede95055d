package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Measurement (6): many keep-alive clients over content pullbroker already
// holds, as a node pool's kubelets re-resolving tags and re-pulling layers
// would send it. Every answer is checked; nothing should reach the
// upstream.

// Request kinds of the load, in the order the report shows them.
const (
	kindHeadPinned = "HEAD manifest, pinned tag"
	kindGetPinned  = "GET manifest, pinned tag"
	kindHeadFresh  = "HEAD manifest, tag within TTL"
	kindGetFresh   = "GET manifest, tag within TTL"
	kindGetDigest  = "GET manifest by digest"
	kindGetBlob    = "GET blob"
)

var loadKinds = []string{kindHeadPinned, kindGetPinned, kindHeadFresh, kindGetFresh, kindGetDigest, kindGetBlob}

// loadRepo holds the load's images, each under a tag the sticky rule of
// pullbrokerConfig pins ("pinned-N") and one that is fresh for an hour
// ("fresh-N").
const loadRepo = "bench/load"

// loadLayerSizes are each load image's layers: small, as configs and the
// top layers of application images are.
var loadLayerSizes = []int64{4 << 10, 64 << 10, 512 << 10}

const loadImages = 2

// loadRequestTimeout bounds one request of the load; one that takes longer
// is an error.
const loadRequestTimeout = 30 * time.Second

// loadRequest is one request the load sends, with what a right answer is.
type loadRequest struct {
	kind   int // index in loadKinds
	method string
	url    string
	// digest is the manifest's Docker-Content-Digest, or the blob's; GET
	// bodies must hash to it.
	digest   string
	size     int64 // GET body length
	manifest bool
}

// check sends q and checks the answer: status, digest header, and for a
// GET the body's length and digest.
func (q loadRequest) check(ctx context.Context, c *http.Client, buf []byte) error {
	ctx, cancel := context.WithTimeout(ctx, loadRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, q.method, q.url, nil)
	if err != nil {
		return err
	}
	if q.manifest {
		req.Header.Set("Accept", acceptManifests)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", q.method, q.url, resp.Status)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); q.manifest && got != q.digest {
		return fmt.Errorf("%s %s: Docker-Content-Digest %q, want %s", q.method, q.url, got, q.digest)
	}
	if q.method == http.MethodHead {
		return nil
	}
	h := sha256.New()
	n, err := drainWith(resp.Body, h, buf)
	if err != nil {
		return fmt.Errorf("%s %s: after %d bytes: %w", q.method, q.url, n, err)
	}
	if n != q.size {
		return fmt.Errorf("%s %s: %d bytes, want %d", q.method, q.url, n, q.size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != q.digest {
		return fmt.Errorf("%s %s: body hashes to %s, want %s", q.method, q.url, got, q.digest)
	}
	return nil
}

// loadRequests are the requests of each kind for the images at base.
func loadRequests(base string, imgs []*benchImage) [][]loadRequest {
	out := make([][]loadRequest, len(loadKinds))
	add := func(kind string, q loadRequest) {
		q.kind = slices.Index(loadKinds, kind)
		out[q.kind] = append(out[q.kind], q)
	}
	for i, img := range imgs {
		for _, tag := range []struct{ name, head, get string }{
			{fmt.Sprintf("pinned-%d", i+1), kindHeadPinned, kindGetPinned},
			{fmt.Sprintf("fresh-%d", i+1), kindHeadFresh, kindGetFresh},
		} {
			u := manifestURL(base, img.repo, tag.name)
			add(tag.head, loadRequest{method: http.MethodHead, url: u, digest: img.digest, manifest: true})
			add(tag.get, loadRequest{method: http.MethodGet, url: u, digest: img.digest, size: img.manifestSize, manifest: true})
		}
		add(kindGetDigest, loadRequest{method: http.MethodGet, url: manifestURL(base, img.repo, img.digest), digest: img.digest, size: img.manifestSize, manifest: true})
		add(kindGetBlob, loadRequest{method: http.MethodGet, url: blobURL(base, img.repo, img.config), digest: img.config, size: img.configSize})
		for _, l := range img.layers {
			add(kindGetBlob, loadRequest{method: http.MethodGet, url: blobURL(base, img.repo, l.digest.String()), digest: l.digest.String(), size: l.size})
		}
	}
	return out
}

// loadWorker is what one client saw.
type loadWorker struct {
	latencies [][]time.Duration // per kind, of successful requests
	errors    []int             // per kind
}

// loadErrors keeps the first few error messages for the report.
type loadErrors struct {
	mu    sync.Mutex
	first []string
}

func (l *loadErrors) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.first) < 5 {
		l.first = append(l.first, err.Error())
	}
}

// runLoad has clients workers, sharing one keep-alive client, each send
// one request after another, rotating through the kinds, until d passed
// or maxRequests were sent.
func runLoad(ctx context.Context, reqs [][]loadRequest, clients int, d time.Duration, maxRequests int) ([]*loadWorker, *loadErrors, time.Duration) {
	c := newClient(clients)
	defer c.CloseIdleConnections()
	var sent atomic.Int64
	errs := &loadErrors{}
	workers := make([]*loadWorker, clients)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := range workers {
		w := &loadWorker{latencies: make([][]time.Duration, len(loadKinds)), errors: make([]int, len(loadKinds))}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			rng := rand.New(rand.NewPCG(uint64(i), 6))
			for n := i; ctx.Err() == nil && time.Now().Before(deadline) && sent.Add(1) <= int64(maxRequests); n++ {
				kind := n % len(loadKinds)
				q := reqs[kind][rng.IntN(len(reqs[kind]))]
				t0 := time.Now()
				if err := q.check(ctx, c, buf); err != nil {
					if ctx.Err() != nil {
						return // interrupted: not the server's error
					}
					w.errors[kind]++
					errs.add(err)
					continue
				}
				w.latencies[kind] = append(w.latencies[kind], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	return workers, errs, time.Since(start)
}

// quantile is the nearest-rank q-quantile of sorted.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// summarize turns what the workers saw into one row per kind and a row
// over all of them.
func summarize(workers []*loadWorker) (rows []loadRow, total loadRow) {
	var all []time.Duration
	for k, kind := range loadKinds {
		var ds []time.Duration
		row := loadRow{kind: kind}
		for _, w := range workers {
			ds = append(ds, w.latencies[k]...)
			row.errors += w.errors[k]
		}
		slices.Sort(ds)
		row.requests = len(ds) + row.errors
		row.p50, row.p99 = quantile(ds, 0.50), quantile(ds, 0.99)
		if len(ds) > 0 {
			row.max = ds[len(ds)-1]
		}
		rows = append(rows, row)
		all = append(all, ds...)
		total.requests += row.requests
		total.errors += row.errors
	}
	slices.Sort(all)
	total.kind = "all"
	total.p50, total.p99 = quantile(all, 0.50), quantile(all, 0.99)
	if len(all) > 0 {
		total.max = all[len(all)-1]
	}
	return rows, total
}

// cachedLoad is measurement (6): it pushes the load images, pulls each
// once through pullbroker (filling its cache and pinning the pinned tags),
// checks every request once, then runs the load and counts what reached
// the upstream meanwhile.
func (e *env) cachedLoad(ctx context.Context, r *results, sz sizes) error {
	var imgs []*benchImage
	l := &loadResult{clients: sz.loadClients, duration: sz.loadDuration, images: loadImages}
	for i := range loadImages {
		var layers []*fileLayer
		for j, size := range loadLayerSizes {
			fl, err := randomFile(filepath.Join(e.dirs["data"], fmt.Sprintf("load-%d-%d", i, j)), size, uint64(40+10*i+j))
			if err != nil {
				return err
			}
			layers = append(layers, fl)
		}
		img, err := pushImage(ctx, e.upHost, loadRepo, []string{fmt.Sprintf("pinned-%d", i+1), fmt.Sprintf("fresh-%d", i+1)}, layers)
		if err != nil {
			return err
		}
		imgs = append(imgs, img)
	}
	reqs := loadRequests(e.pbURL, imgs)
	l.blobs = len(reqs[slices.Index(loadKinds, kindGetBlob)])

	log.Printf("(6) warming pullbroker's cache with %d images", loadImages)
	c := newClient(1)
	buf := make([]byte, 32<<10)
	// GETs first: they fill the cache and resolve (and pin) the tags.
	for _, k := range []string{kindGetPinned, kindGetFresh, kindGetDigest, kindGetBlob, kindHeadPinned, kindHeadFresh} {
		for _, q := range reqs[slices.Index(loadKinds, k)] {
			if err := q.check(ctx, c, buf); err != nil {
				return fmt.Errorf("(6) warm-up: %w", err)
			}
		}
	}
	c.CloseIdleConnections()
	if err := e.resetCounts(ctx); err != nil {
		return err
	}

	log.Printf("(6) %d clients for %s over cached content", sz.loadClients, sz.loadDuration)
	w := watchRSS(e.pb.pid())
	workers, errs, elapsed := runLoad(ctx, reqs, sz.loadClients, sz.loadDuration, sz.loadMaxRequests)
	l.rss = w.peakBytes()
	if err := ctx.Err(); err != nil {
		return err
	}
	st, err := e.stats(ctx)
	if err != nil {
		return err
	}
	l.elapsed = elapsed
	l.rows, l.total = summarize(workers)
	l.errorSamples = errs.first
	l.upstream, l.byMethod = st.Requests, st.ByMethod
	r.load = l
	return nil
}
