package e2e

// The fault-injection suite (issue 12): the real binary in front of docker-registry, with a fault
// proxy between the two that misbehaves on the blob GETs of one digest.

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
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

// Faults the proxy applies to the body of the chosen blob.
const (
	faultNone    = ""
	faultHold    = "hold"    // the first holdAfter bytes, then nothing until released
	faultTrickle = "trickle" // one byte a second
	faultEndless = "endless" // the blob, then zeros for ever, without Content-Length
)

const holdAfter = 256 << 10

// faultProxy is a reverse proxy to the upstream registry that applies a fault to the GETs of one
// blob, and counts them.
type faultProxy struct {
	srv     *httptest.Server
	digest  string
	fault   atomic.Value // string
	release chan struct{}
	once    sync.Once
	gets    atomic.Int64
}

func newFaultProxy(t *testing.T, target, digest, fault string) *faultProxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{digest: digest, release: make(chan struct{})}
	p.fault.Store(fault)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1 // every byte the fault lets through reaches pullbroker at once
	rp.ModifyResponse = func(resp *http.Response) error {
		req := resp.Request
		if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/blobs/"+p.digest) || resp.StatusCode != http.StatusOK {
			return nil
		}
		p.gets.Add(1)
		switch p.fault.Load().(string) {
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
	p.srv = httptest.NewServer(rp)
	t.Cleanup(func() { p.releaseHeld(); p.srv.Close() })
	return p
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
func pullBlob(t *testing.T, client *http.Client, url string) (status int, digest string, n int64, readErr error) {
	t.Helper()
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
	status, digest, n, err := pullBlob(t, http.DefaultClient, blobURL)
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

// TestHostileUpstream: a layer trickled at one byte a second is cut within the stall bound
// (storage.fills.stallTimeout, 2 s here), and one sent without Content-Length and without end is
// cut at its descriptor's size. Neither completes a client's response, is cached, or leaves a
// spool.
func TestHostileUpstream(t *testing.T) {
	const stall = 2 * time.Second
	f := newFixture(t)
	layers := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers
	for _, tc := range []struct {
		fault string
		layer descriptor
		bound time.Duration
	}{
		{faultTrickle, layers[0], stall + 3*time.Second},
		{faultEndless, layers[1], 10 * time.Second},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			faults := newFaultProxy(t, f.upstream.Addr, tc.layer.Digest, tc.fault)
			pb := f.startPullbroker(pbConfig{
				Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())},
				Fills:     fmt.Sprintf("{stallTimeout: %s}", stall),
			})
			linkManifest(t, pb)
			start := time.Now()
			// A fresh connection: Go's client would retry a GET cut before any response on a
			// reused one, and the test would time two cuts.
			client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
			status, digest, n, err := pullBlob(t, client,
				pb.url("/v2/"+upstreamName+"/"+appRepo+"/blobs/"+tc.layer.Digest))
			took := time.Since(start)
			t.Logf("%s: client got %d, %d bytes, %v after %v", tc.fault, status, n, err, took.Round(time.Millisecond))
			if status == http.StatusOK && err == nil {
				t.Fatalf("a complete 200 response (%d bytes %s)", n, digest)
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
			waitUntil(t, "uploads/ is empty", func() bool { return len(uploads(t, pb.StorageDir)) == 0 })
		})
	}
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
		status, digest, n, err := pullBlob(t, client, blobURL(d.Digest))
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
