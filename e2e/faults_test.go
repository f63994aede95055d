package e2e

// The fault-injection suite (issue 12): the real binary in front of docker-registry, with a fault
// proxy between the two that misbehaves on the blob GETs of one digest, or plays a hostile
// upstream: huge manifests and token answers, lying digests, redirects to another loopback
// address.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"

	"github.com/opencontainers/go-digest"
)

// Faults the proxy applies: to the body of the chosen blob, or, for the hostile-upstream faults,
// to manifest requests, token requests and the chosen blob's GET.
const (
	faultNone    = ""
	faultHold    = "hold"    // the first holdAfter bytes, then nothing until released
	faultTrickle = "trickle" // one byte a second
	faultEndless = "endless" // the blob, then zeros for ever, without Content-Length

	// Every manifest HEAD and GET is answered with a hugeManifestSize manifest of a valid media
	// type and its true digest, streamed from a generator; HEAD announces the size.
	faultHugeManifest = "huge-manifest"
	// The same without Content-Length: HEAD leaves it out (pullbroker then GETs the tag) and GET
	// streams the body chunked, so only the reader's own limit can stop it.
	faultHugeManifestChunked = "huge-manifest-chunked"
	// Manifest GETs carry the upstream's Docker-Content-Digest over a body with one byte more.
	faultLyingDigest = "lying-digest"
	// The same, after a HEAD without Docker-Content-Digest: pullbroker GETs the tag, and only
	// the header names the digest the body is checked against.
	faultLyingDigestByTag = "lying-digest-by-tag"
	// Requests without a Bearer token get 401 with a realm on the proxy's own host:port, whose
	// /token answers 200 with a tokenBombSize JSON body.
	faultTokenBomb = "token-bomb"
	// After a HEAD without Docker-Content-Digest, the GET of the tag is redirected to a decoy
	// registry on 127.0.0.2 that answers a manifest of its own.
	faultRedirectManifest = "redirect-manifest"
	// The chosen blob's GET is redirected to the decoy on 127.0.0.2.
	faultRedirectBlob = "redirect-blob"
)

const (
	holdAfter        = 256 << 10
	hugeManifestSize = 100 << 20
	tokenBombSize    = 50 << 20
)

// faultProxy is a reverse proxy to the upstream registry that applies a fault to the GETs of one
// blob, and counts them; or answers manifest and token requests itself as a hostile upstream.
type faultProxy struct {
	srv     *httptest.Server
	rp      *httputil.ReverseProxy
	digest  string
	fault   atomic.Value // string
	release chan struct{}
	once    sync.Once
	gets    atomic.Int64
	// hostile counts the answers a fault changed.
	hostile atomic.Int64
	// hostileBytes counts the body bytes they got out before pullbroker hung up.
	hostileBytes atomic.Int64
	// decoy, on 127.0.0.2, is where the redirect faults point.
	decoy *decoy
}

func newFaultProxy(t *testing.T, target, digest, fault string) *faultProxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{digest: digest, release: make(chan struct{}), decoy: newDecoy(t)}
	p.fault.Store(fault)
	if fault == faultHugeManifest || fault == faultHugeManifestChunked {
		hugeManifestDigest() // hashed now, not in the first answer a test times
	}
	p.rp = httputil.NewSingleHostReverseProxy(u)
	p.rp.FlushInterval = -1 // every byte the fault lets through reaches pullbroker at once
	p.rp.ModifyResponse = p.modifyResponse
	p.srv = httptest.NewServer(p)
	t.Cleanup(func() { p.releaseHeld(); p.srv.Close() })
	return p
}

// ServeHTTP answers what the hostile-upstream faults answer themselves and passes the rest on.
func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fault := p.fault.Load().(string)
	manifest := strings.Contains(r.URL.Path, "/manifests/")
	switch {
	case fault == faultTokenBomb && r.URL.Path == "/token":
		p.hostile.Add(1)
		w.Header().Set("Content-Type", "application/json")
		p.stream(w, tokenBomb())
	case fault == faultTokenBomb && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="x"`, r.Host))
		w.WriteHeader(http.StatusUnauthorized)
	case manifest && (fault == faultHugeManifest || fault == faultHugeManifestChunked):
		p.hostile.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", hugeManifestDigest())
		if fault == faultHugeManifest {
			w.Header().Set("Content-Length", fmt.Sprint(hugeManifestSize))
		}
		if r.Method == http.MethodHead {
			return
		}
		p.stream(w, hugeManifest())
	case manifest && r.Method == http.MethodGet && fault == faultRedirectManifest,
		r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+p.digest) && fault == faultRedirectBlob:
		p.hostile.Add(1)
		http.Redirect(w, r, p.decoy.srv.URL+r.URL.Path, http.StatusFound)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// stream sends body until it ends or the reader hangs up, and counts what got out.
func (p *faultProxy) stream(w http.ResponseWriter, body io.Reader) {
	n, _ := io.Copy(w, body)
	p.hostileBytes.Add(n)
}

func (p *faultProxy) modifyResponse(resp *http.Response) error {
	req := resp.Request
	fault := p.fault.Load().(string)
	if strings.Contains(req.URL.Path, "/manifests/") && resp.StatusCode == http.StatusOK {
		switch {
		case req.Method == http.MethodHead && (fault == faultLyingDigestByTag || fault == faultRedirectManifest):
			resp.Header.Del("Docker-Content-Digest")
		case req.Method == http.MethodGet && (fault == faultLyingDigest || fault == faultLyingDigestByTag):
			p.hostile.Add(1)
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			// Still the same manifest to a JSON parser; no longer the bytes of its digest.
			body = append(body, '\n')
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		}
		return nil
	}
	if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/blobs/"+p.digest) || resp.StatusCode != http.StatusOK {
		return nil
	}
	p.gets.Add(1)
	if fault != faultNone {
		p.hostile.Add(1)
	}
	switch fault {
	case faultHold:
		resp.Body = &heldBody{rc: resp.Body, ctx: req.Context(), release: p.release, left: holdAfter}
	case faultTrickle:
		resp.Body = &trickleBody{rc: resp.Body, ctx: req.Context()}
	case faultEndless:
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(resp.Body, zeros{}), resp.Body}
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
	}
	return nil
}

// hugeManifest is a hugeManifestSize image manifest (its padding in an annotation), generated as
// it is read.
func hugeManifest() io.Reader {
	const head = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"padding":"`
	const tail = `"}}`
	return io.MultiReader(strings.NewReader(head),
		io.LimitReader(repeated('a'), hugeManifestSize-int64(len(head)+len(tail))), strings.NewReader(tail))
}

// hugeManifestDigest is hugeManifest's true digest, hashed once as it streams by.
var hugeManifestDigest = sync.OnceValue(func() string {
	h := sha256.New()
	if _, err := io.Copy(h, hugeManifest()); err != nil {
		panic(err)
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil))
})

// tokenBomb is a tokenBombSize token answer, generated as it is read.
func tokenBomb() io.Reader {
	const head, tail = `{"token":"`, `"}`
	return io.MultiReader(strings.NewReader(head),
		io.LimitReader(repeated('a'), tokenBombSize-int64(len(head)+len(tail))), strings.NewReader(tail))
}

// repeated reads as an endless run of one byte.
type repeated byte

func (b repeated) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// decoy stands for what a redirect must never reach (a metadata service, the API server): a
// server on 127.0.0.2 that answers every request with a manifest of its own, and counts them.
type decoy struct {
	srv      *httptest.Server
	requests atomic.Int64
}

// decoyManifest is what the decoy answers: a valid, empty image manifest.
const decoyManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

func newDecoy(t *testing.T) *decoy {
	t.Helper()
	d := &decoy{}
	d.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.requests.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", digestOf([]byte(decoyManifest)))
		io.WriteString(w, decoyManifest)
	}))
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("a decoy on a second loopback address: %v", err)
	}
	d.srv.Listener.Close()
	d.srv.Listener = ln
	d.srv.Start()
	t.Cleanup(d.srv.Close)
	return d
}

func (p *faultProxy) endpoint() string { return p.srv.URL }

// releaseHeld lets held bodies continue.
func (p *faultProxy) releaseHeld() { p.once.Do(func() { close(p.release) }) }

type heldBody struct {
	rc      io.ReadCloser
	ctx     context.Context
	release <-chan struct{}
	left    int
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		select {
		case <-b.release:
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
		return b.rc.Read(p)
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= n
	return n, err
}

func (b *heldBody) Close() error { return b.rc.Close() }

type trickleBody struct {
	rc  io.ReadCloser
	ctx context.Context
}

func (b *trickleBody) Read(p []byte) (int, error) {
	select {
	case <-time.After(time.Second):
	case <-b.ctx.Done():
		return 0, b.ctx.Err()
	}
	return b.rc.Read(p[:1])
}

func (b *trickleBody) Close() error { return b.rc.Close() }

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// blobFile is where pullbroker's filesystem storage keeps a committed blob.
func blobFile(storageDir, digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(storageDir, "blobs", "sha256", hex[:2], hex, "data")
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// uploads lists what is in pullbroker's uploads/ directory.
func uploads(t *testing.T, storageDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(storageDir, "uploads"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// pullBlob GETs a blob through pullbroker and returns the status, the bytes' digest and count,
// and the read error (a cut connection).
func pullBlob(client *http.Client, url string) (status int, digest string, n int64, readErr error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, readErr = io.Copy(h, resp.Body)
	return resp.StatusCode, fmt.Sprintf("sha256:%x", h.Sum(nil)), n, readErr
}

// linkManifest GETs team/app:v1 through pullbroker, which links its blobs (with their sizes).
func linkManifest(t *testing.T, pb *pullbroker) {
	t.Helper()
	resp, body := get(t, http.DefaultClient, pb.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+appTag))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s %s", resp.Status, body)
	}
}

// TestKillMidFillThenRestart: pullbroker is killed with SIGKILL while it fills a layer. No partial
// blob is ever stored or served; the restarted process removes the spool the crash left (once it
// is older than the fill timeout, here aged by hand) but not the fresh spool of another replica's
// running fill; the next pull fills the layer whole and leaves no spool of its own.
func TestKillMidFillThenRestart(t *testing.T) {
	f := newFixture(t)
	layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[0]
	faults := newFaultProxy(t, f.upstream.Addr, layer.Digest, faultHold)
	cfg := pbConfig{Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())}, StorageDir: t.TempDir()}
	pb := f.startPullbroker(cfg)
	linkManifest(t, pb)
	blobURL := pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)

	resp, err := http.Get(blobURL)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(resp.Body, holdAfter/2))
	if err != nil || resp.StatusCode != http.StatusOK || len(got) != holdAfter/2 {
		t.Fatalf("the first half of the held layer: %s, %d bytes, %v", resp.Status, len(got), err)
	}
	pb.kill9()
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("the client's response ended cleanly after %d bytes when pullbroker was killed mid-fill", len(got)+len(rest))
	}
	if exists(blobFile(cfg.StorageDir, layer.Digest)) {
		t.Fatal("a partial blob was committed")
	}
	left := uploads(t, cfg.StorageDir)
	if len(left) == 0 {
		t.Fatal("the killed fill left no spool: the test did not kill it mid-fill")
	}
	t.Logf("the killed process left %v", left)
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range left {
		if err := os.Chtimes(filepath.Join(cfg.StorageDir, "uploads", name), old, old); err != nil {
			t.Fatal(err)
		}
	}
	otherReplica := filepath.Join(cfg.StorageDir, "uploads", "pullbroker-fill-of-another-replica")
	writeFile(t, otherReplica, "still being written")

	faults.fault.Store(faultNone)
	faults.releaseHeld()
	pb = f.startPullbroker(cfg)
	blobURL = pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)
	status, digest, n, err := pullBlob(http.DefaultClient, blobURL)
	if status != http.StatusOK || digest != layer.Digest || n != layer.Size || err != nil {
		t.Fatalf("after the restart: %d, %d bytes %s (%v); want 200, %d bytes %s", status, n, digest, err, layer.Size, layer.Digest)
	}
	// The client has its last byte once the layer is verified; the commit follows.
	waitUntil(t, "the layer is committed", func() bool { return exists(blobFile(cfg.StorageDir, layer.Digest)) })
	if d, size := fileDigest(t, blobFile(cfg.StorageDir, layer.Digest)); d != layer.Digest || size != layer.Size {
		t.Fatalf("committed blob %s, %d bytes", d, size)
	}
	if left := uploads(t, cfg.StorageDir); len(left) != 1 || left[0] != filepath.Base(otherReplica) {
		t.Errorf("uploads/ after the restart and the next fill: %v, want only the other replica's spool", left)
	}
	if got := metricValue(t, pb.metrics(t), "pullbroker_uploads_removed_total", `reason="stale"`); got != float64(len(left)) {
		t.Errorf("stale uploads removed counted %v, want %d", got, len(left))
	}
	if faults.gets.Load() != 2 {
		t.Errorf("upstream blob GETs = %d, want 2 (the killed fill and the new one)", faults.gets.Load())
	}
}

// TestColdBlobWhoseClientsLeave: 50 clients pull one cold layer; 49 go away after the first
// bytes while the upstream holds the rest. The survivor gets every byte right, the upstream sees
// one GET, and pullbroker's goroutines come back to where they were.
func TestColdBlobWhoseClientsLeave(t *testing.T) {
	const clients = 50
	f := newFixture(t)
	layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[1]
	faults := newFaultProxy(t, f.upstream.Addr, layer.Digest, faultHold)
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())}})
	linkManifest(t, pb)
	blobURL := pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)
	baseline := metricValue(t, pb.metrics(t), "go_goroutines")

	transport := &http.Transport{MaxConnsPerHost: clients, MaxIdleConnsPerHost: clients}
	client := &http.Client{Timeout: time.Minute, Transport: transport}
	var wg sync.WaitGroup
	started := make(chan struct{}, clients)
	survivor := make(chan error, 1)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, blobURL, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				started <- struct{}{}
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			n, err := io.CopyN(h, resp.Body, 64<<10)
			started <- struct{}{}
			if err != nil {
				t.Errorf("client %d: first 64 KiB: %d bytes, %v", i, n, err)
				return
			}
			if i != 0 {
				return // leaves: the deferred cancel and close hang up
			}
			m, err := io.Copy(h, resp.Body)
			if d := fmt.Sprintf("sha256:%x", h.Sum(nil)); err != nil || n+m != layer.Size || d != layer.Digest {
				survivor <- fmt.Errorf("%d bytes %s (%v), want %d bytes %s", n+m, d, err, layer.Size, layer.Digest)
				return
			}
			survivor <- nil
		}()
	}
	for range clients {
		<-started
	}
	time.Sleep(200 * time.Millisecond) // the 49 hang-ups reach pullbroker
	faults.releaseHeld()
	if err := <-survivor; err != nil {
		t.Fatalf("the client that stayed: %v", err)
	}
	wg.Wait()
	transport.CloseIdleConnections()
	if n := faults.gets.Load(); n != 1 {
		t.Errorf("upstream GETs of the layer = %d, want 1", n)
	}
	var now float64
	deadline := time.Now().Add(15 * time.Second)
	for {
		now = metricValue(t, pb.metrics(t), "go_goroutines")
		if now <= baseline+3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("pullbroker goroutines: %v before, %v after %d clients of which %d left", baseline, now, clients, clients-1)
	if now > baseline+3 {
		t.Errorf("goroutines grew from %v to %v", baseline, now)
	}
}

// TestHostileUpstream: an upstream that misbehaves on purpose, one fault per subtest, each behind
// a fresh pullbroker. A layer trickled at one byte a second is cut within the stall bound
// (storage.fills.stallTimeout, 2 s here), and one sent without Content-Length and without end is
// cut at its descriptor's size; neither completes a client's response or leaves a spool. A
// 100 MiB manifest (announced, or streamed without a length), a manifest whose body does not
// match its Docker-Content-Digest, a 50 MiB token answer, and redirects of a manifest or a blob
// to another loopback address are each answered with an error, promptly. Nothing hostile is
// cached, no redirect target is ever reached, and pullbroker's peak resident memory stays under
// maxPeakRSS.
func TestHostileUpstream(t *testing.T) {
	const (
		stall = 2 * time.Second
		// pullbroker's peak resident memory (VmHWM, the whole process) may grow by at most
		// maxRSSGrowth while it refuses a hostile answer, and stay under maxPeakRSS: a 100 MiB
		// manifest or a 50 MiB token answer held whole would pass both. The -race runtime
		// starts higher and shadows every allocation, so its bounds are its own.
		maxPeakRSS   = 150 << 20
		maxRSSGrowth = 40 << 20
		// Measured under -race: the 4 MiB manifest limit read twice (a HEAD without
		// Content-Length falls back to GET) grew VmHWM by 60 to 73 MiB, from 83 to 98 MiB.
		maxPeakRSSRace   = 250 << 20
		maxRSSGrowthRace = 120 << 20
		// How long a refusal may take: these answers are refused on their headers or their
		// first MiBs, well before any configured timeout.
		refusalBound = 5 * time.Second
	)
	f := newFixture(t)
	layers := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers
	for _, tc := range []struct {
		fault string
		// layer is the blob the client pulls; nil: the client GETs and HEADs team/app:v1.
		layer *descriptor
		// status is pullbroker's answer to the client; 0 for the cut blob bodies, whose
		// answer may be a 200 cut short or no answer at all.
		status int
		bound  time.Duration
	}{
		{fault: faultTrickle, layer: &layers[0], bound: stall + 3*time.Second},
		{fault: faultEndless, layer: &layers[1], bound: 10 * time.Second},
		{fault: faultHugeManifest, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultHugeManifestChunked, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultLyingDigest, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultLyingDigestByTag, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultTokenBomb, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultRedirectManifest, status: http.StatusBadGateway, bound: refusalBound},
		{fault: faultRedirectBlob, layer: &layers[2], status: http.StatusBadGateway, bound: refusalBound},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			target := ""
			if tc.layer != nil {
				target = tc.layer.Digest
			}
			faults := newFaultProxy(t, f.upstream.Addr, target, tc.fault)
			pb := f.startPullbroker(pbConfig{
				Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())},
				Fills:     fmt.Sprintf("{stallTimeout: %s}", stall),
			})
			// A fresh connection: Go's client would retry a GET cut before any response on a
			// reused one, and the test would time two cuts.
			client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
			if tc.layer != nil {
				linkManifest(t, pb)
			}
			before := peakRSS(t, pb.Pid())
			if tc.layer != nil {
				start := time.Now()
				status, digest, n, err := pullBlob(client,
					pb.url("/v2/"+upstreamName+"/"+appRepo+"/blobs/"+tc.layer.Digest))
				took := time.Since(start)
				t.Logf("%s: client got %d, %d bytes, %v after %v", tc.fault, status, n, err, took.Round(time.Millisecond))
				if status == http.StatusOK && err == nil {
					t.Fatalf("a complete 200 response (%d bytes %s)", n, digest)
				}
				if tc.status != 0 && status != tc.status {
					t.Errorf("client got status %d, want %d", status, tc.status)
				}
				if n >= tc.layer.Size {
					t.Errorf("client received %d bytes of a %d-byte layer", n, tc.layer.Size)
				}
				if took > tc.bound {
					t.Errorf("cut after %v, want within %v", took, tc.bound)
				}
				if exists(blobFile(pb.StorageDir, tc.layer.Digest)) {
					t.Error("the layer was cached")
				}
			} else {
				for _, method := range []string{http.MethodHead, http.MethodGet} {
					start := time.Now()
					status, body := manifestAnswer(t, client, method, pb.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+appTag))
					took := time.Since(start)
					t.Logf("%s: client %s got %d %.200q after %v", tc.fault, method, status, body, took.Round(time.Millisecond))
					if status != tc.status {
						t.Errorf("client %s got status %d, want %d", method, status, tc.status)
					}
					if method == http.MethodGet && status >= 400 {
						if code, _ := ociError(t, body); code == "" {
							t.Errorf("client GET got no OCI error code")
						}
					}
					if took > tc.bound {
						t.Errorf("client %s answered after %v, want within %v", method, took, tc.bound)
					}
				}
				if stored := storedFiles(t, pb.StorageDir); len(stored) > 0 {
					t.Errorf("cached after a hostile manifest answer: %v", stored)
				}
			}
			if n := faults.hostile.Load(); n == 0 {
				t.Fatal("the fault was never applied: the test tested nothing")
			}
			if n := faults.decoy.requests.Load(); n != 0 {
				t.Errorf("the decoy on 127.0.0.2 got %d requests", n)
			}
			waitUntil(t, "uploads/ is empty", func() bool { return len(uploads(t, pb.StorageDir)) == 0 })
			peak := peakRSS(t, pb.Pid())
			t.Logf("%s: %d hostile answers, %d hostile body bytes sent; pullbroker peak RSS %.1f MiB before, %.1f MiB after",
				tc.fault, faults.hostile.Load(), faults.hostileBytes.Load(), mib(before), mib(peak))
			maxPeak, maxGrowth := int64(maxPeakRSS), int64(maxRSSGrowth)
			if raceEnabled {
				maxPeak, maxGrowth = maxPeakRSSRace, maxRSSGrowthRace
			}
			if peak > maxPeak || peak-before > maxGrowth {
				t.Errorf("pullbroker's peak RSS went from %.1f to %.1f MiB; want at most %.0f MiB, grown by at most %.0f MiB",
					mib(before), mib(peak), mib(maxPeak), mib(maxGrowth))
			}
			if pb.Exited() {
				t.Fatal("pullbroker exited")
			}
		})
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// manifestAnswer sends a manifest request and returns the status and at most 1 MiB of the body
// (a hostile manifest passed through is not read whole).
func manifestAnswer(t *testing.T, client *http.Client, method, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body
}

// storedFiles lists the files pullbroker's cache holds (uploads/ and cluster/ aside), relative
// to its root.
func storedFiles(t *testing.T, storageDir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(storageDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(storageDir, p)
		// uploads/ holds objects being written; cluster/ the replicas' lease and journals.
		if d.IsDir() && (rel == "uploads" || rel == "cluster") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				t.Fatalf("VmHWM line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestDiskFull: the cache on a small tmpfs that fills up. Cached content keeps being served; a
// layer that does not fit is streamed through verified, uncached, however often it is asked for;
// nothing piles up under uploads/ (no spool per retry, no *.tmp per write or /readyz probe);
// /readyz says why; the process stays up; and once space is back the layer is cached with no
// restart and no cleanup by hand.
func TestDiskFull(t *testing.T) {
	f := newFixture(t)
	storage := testenv.MountTmpfs(t, "16m")
	pb := f.startPullbroker(pbConfig{StorageDir: storage})
	linkManifest(t, pb)
	m := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest))
	blobURL := func(d string) string { return pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + d) }
	client := &http.Client{Timeout: time.Minute}
	pull := func(what string, d descriptor) {
		t.Helper()
		status, digest, n, err := pullBlob(client, blobURL(d.Digest))
		if status != http.StatusOK || digest != d.Digest || n != d.Size || err != nil {
			t.Fatalf("%s: %d, %d bytes %s (%v); want 200, %d bytes %s", what, status, n, digest, err, d.Size, d.Digest)
		}
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + pb.Admin + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pull("a layer while there is room", m.Layers[0])

	// Less room than a layer: it is streamed, every time, and nothing is left behind.
	filler := testenv.FillDisk(t, storage, 1<<20)
	for i := range 3 {
		pull(fmt.Sprintf("a layer that does not fit, attempt %d", i+1), m.Layers[1])
	}
	if exists(blobFile(storage, m.Layers[1].Digest)) {
		t.Fatal("a layer that does not fit was cached")
	}

	// No room at all: writes fail; still served, and still nothing left behind.
	testenv.FillDisk(t, storage, 0)
	pull("a layer on a full disk", m.Layers[2])
	for range 3 {
		if status, body := readyz(); status != http.StatusServiceUnavailable {
			t.Errorf("/readyz on a full disk: %d %s", status, body)
		} else {
			t.Logf("/readyz on a full disk: %s", strings.TrimSpace(body))
		}
	}
	// A manifest the disk cannot take is verified and answered, uncached.
	resp, body := get(t, client, pb.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+f.multi.Digest))
	if resp.StatusCode != http.StatusOK || digest.FromBytes(body).String() != f.multi.Digest {
		t.Errorf("an uncached manifest on a full disk: %s (%.120s), want 200 with the verified manifest", resp.Status, body)
	}
	pull("a cached layer on a full disk", m.Layers[0])
	if left := uploads(t, storage); len(left) > 0 {
		t.Errorf("uploads/ on a full disk holds %v", left)
	}
	if pb.Exited() {
		t.Fatal("pullbroker exited on a full disk")
	}

	// Space is back: the next pulls cache the layer again by themselves.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !exists(blobFile(storage, m.Layers[1].Digest)) {
		if time.Now().After(deadline) {
			t.Fatal("the layer was not cached within 30 s of space coming back")
		}
		pull("a layer while space comes back", m.Layers[1])
		time.Sleep(time.Second)
	}
	if status, body := readyz(); status != http.StatusOK {
		t.Errorf("/readyz once space is back: %d %s", status, body)
	}
	page := pb.metrics(t)
	t.Logf("fills refused for storage: %v, streamed uncached: %v",
		metricValue(t, page, "pullbroker_fills_refused_total", `reason="storage"`), metricValue(t, page, "pullbroker_uncached_streams_total"))
}
