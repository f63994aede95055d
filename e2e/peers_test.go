package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/peers"
	"github.com/pullbroker/pullbroker/tags"
)

// The image the peer tests pull cold through three replicas: 150 MiB, as issue 11 asks.
const (
	peersRepo      = "peers/big"
	peersLayers    = 3
	peersLayerSize = 50 << 20
	peersClients   = 32
)

// peerReplicas are pullbrokers on one S3 bucket that know each other from a static cluster.peers
// list, each with its peer listener on its own port.
type peerReplicas struct {
	replicas []*pullbroker
	// peerAddrs[i] is replicas[i]'s peer listener.
	peerAddrs []string
	token     string
}

// startPeerReplicas starts n replicas of base (its storage and upstreams; the cluster section is
// theirs) whose peer list also names others, peers that are not pullbrokers.
func (f *fixture) startPeerReplicas(t *testing.T, base pbConfig, n int, others ...string) *peerReplicas {
	t.Helper()
	c := &peerReplicas{token: randomSecret("peer-token")}
	f.secrets.add("peer token", c.token, "")
	tokenFile := filepath.Join(t.TempDir(), "peer-token")
	writeFile(t, tokenFile, c.token+"\n")
	quoted := make([]string, n)
	for i := range n {
		c.peerAddrs = append(c.peerAddrs, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
		quoted[i] = fmt.Sprintf("%q", c.peerAddrs[i])
	}
	for _, o := range others {
		quoted = append(quoted, fmt.Sprintf("%q", o))
	}
	for i := range n {
		cfg := base
		cfg.Cluster = fmt.Sprintf("  peers: [%s]\n  peerListen: %q\n  peerTokenFile: %q", strings.Join(quoted, ", "), c.peerAddrs[i], tokenFile)
		if base.PeerTLS != "" {
			cfg.Cluster += "\n  peerTLS: " + base.PeerTLS
		}
		c.replicas = append(c.replicas, f.startPullbroker(cfg))
	}
	return c
}

// owner is the index of the replica that owns key.
func (c *peerReplicas) owner(key string) int {
	owner := ownerOf(key, c.peerAddrs)
	for i, a := range c.peerAddrs {
		if a == owner {
			return i
		}
	}
	panic("no owner of " + key)
}

// ownerOf is the member of a peer set that owns key.
func ownerOf(key string, members []string) string {
	set := peers.NewSet(nil)
	set.Update(members)
	return set.Owner(key)
}

// peerGet sends a peer request for a blob to addr, with token unless it is empty.
func peerGet(t *testing.T, addr, token, dgst string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+peers.ProtocolPrefix+"blobs/"+dgst+"?registry="+upstreamName+"&repository="+peersRepo, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	_, _ = io.Copy(h, resp.Body)
	return resp.StatusCode, fmt.Sprintf("sha256:%x", h.Sum(nil))
}

// TestReplicasFetchFromUpstreamOnce (issue 11): three replicas on one bucket with a static peer
// list, a counting proxy in front of the upstream. 32 clients spread over the three pull a cold
// 150 MiB image at one instant: every client gets every blob with the right digest, the upstream
// sends the image's blob bytes once (1.00x) and is asked for the one manifest once. Then: the
// registry port does not serve peer requests, and the peer port refuses one without the token.
func TestReplicasFetchFromUpstreamOnce(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	imageDigest := testenv.PushTestImage(t, f.upstream.Addr, peersRepo, "v1", peersLayers, peersLayerSize, &f.auth)
	raw := f.upstreamManifest(peersRepo + "@" + imageDigest)
	blobs := parseManifest(t, raw).blobs()
	var imageBytes int64
	for _, b := range blobs {
		imageBytes += b.Size
	}
	counting := newUpstreamProxy(t, f.upstream.Addr)
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(counting.endpoint())}}, 3)

	client := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxConnsPerHost: peersClients, MaxIdleConnsPerHost: peersClients}}
	start := make(chan struct{})
	errs := make(chan error, peersClients)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range peersClients {
		pb := c.replicas[i%len(c.replicas)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := pullImage(client, pb, peersRepo, "v1", imageDigest); err != nil {
				errs <- fmt.Errorf("client %d through %s: %w", i, pb.Addr, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	elapsed := time.Since(began)

	counts := counting.counts()
	blobBytes := counting.repoBytes(peersRepo) - int64(len(raw))
	t.Logf("%d clients over %d replicas pulled %d MiB in %v; upstream requests %v, blob bytes %.2fx the image",
		peersClients, len(c.replicas), imageBytes>>20, elapsed.Round(time.Millisecond), counts, float64(blobBytes)/float64(imageBytes))
	if blobBytes != imageBytes {
		t.Errorf("the upstream sent %d blob bytes for a %d-byte image (%.2fx), want 1.00x", blobBytes, imageBytes, float64(blobBytes)/float64(imageBytes))
	}
	if counts["GET manifest"] != 1 || counts["GET blob"] != len(blobs) {
		t.Errorf("upstream GETs: %d manifest, %d blob; want 1 and %d: %v", counts["GET manifest"], counts["GET blob"], len(blobs), counts)
	}
	for i, pb := range c.replicas {
		m := pb.metrics(t)
		for _, name := range []string{"pullbroker_peer_forwards_total", "pullbroker_peer_forward_bytes_total", "pullbroker_peer_owner_unreachable_total", "pullbroker_peers_live"} {
			for _, line := range strings.Split(m, "\n") {
				if strings.HasPrefix(line, name) {
					t.Logf("replica %d: %s", i, line)
				}
			}
		}
	}

	layer := blobs[len(blobs)-1].Digest
	owner := c.owner(layer)
	if status, _ := peerGet(t, c.replicas[owner].Addr, c.token, layer); status == http.StatusOK {
		t.Errorf("the registry port answered a peer request with %d", status)
	}
	if status, _ := peerGet(t, c.peerAddrs[owner], "", layer); status != http.StatusUnauthorized {
		t.Errorf("a peer request without the token: %d, want 401", status)
	}
	if status, _ := peerGet(t, c.peerAddrs[owner], "not-"+c.token, layer); status != http.StatusUnauthorized {
		t.Errorf("a peer request with a wrong token: %d, want 401", status)
	}
	if status, got := peerGet(t, c.peerAddrs[owner], c.token, layer); status != http.StatusOK || got != layer {
		t.Errorf("a peer request with the token: %d, %s; want 200 %s", status, got, layer)
	}
}

// pullImage pulls repo:tag through pb as a runtime does, the manifest and then every blob, and
// checks every digest.
func pullImage(client *http.Client, pb *pullbroker, repo, tag, want string) error {
	req, err := http.NewRequest(http.MethodGet, pb.url("/v2/"+upstreamName+"/"+repo+"/manifests/"+tag), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || digestOf(raw) != want {
		return fmt.Errorf("manifest: %s, digest %s (%v), want %s", resp.Status, digestOf(raw), err, want)
	}
	var m ociManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	for _, b := range m.blobs() {
		status, got, n, err := pullBlob(client, pb.url("/v2/"+upstreamName+"/"+repo+"/blobs/"+b.Digest))
		if err != nil || status != http.StatusOK || got != b.Digest || n != b.Size {
			return fmt.Errorf("blob %s: %d, %d bytes %s (%v)", b.Digest, status, n, got, err)
		}
	}
	return nil
}

// TestKillOwnerMidFill (issue 11): the owner of a layer is killed with SIGKILL while it fills the
// layer for itself and the two other replicas. The other replicas' clients still get the whole
// layer with the right digest (the rest from the upstream), the owner's own client is cut (never
// a short body taken for the whole) and completes through another replica, and the bucket ends
// with the layer committed once and no upload left.
func TestKillOwnerMidFill(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[0]
	faults := newFaultProxy(t, f.upstream.Addr, layer.Digest, faultHold)
	t.Cleanup(faults.releaseHeld)
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(faults.endpoint())}}, 3)
	for _, pb := range c.replicas {
		linkManifest(t, pb)
	}
	owner := c.owner(layer.Digest)
	blobPath := "/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest

	// Every replica's client has part of the layer, held by the upstream behind the owner.
	type pull struct {
		resp *http.Response
		h    hash.Hash
		n    int64
	}
	pulls := make([]*pull, len(c.replicas))
	for i, pb := range c.replicas {
		resp, err := http.Get(pb.url(blobPath))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET through replica %d: %v, %v", i, resp, err)
		}
		p := &pull{resp: resp, h: sha256.New()}
		n, err := io.Copy(p.h, io.LimitReader(resp.Body, holdAfter/2))
		if err != nil || n != holdAfter/2 {
			t.Fatalf("the first half of the held layer through replica %d: %d bytes, %v", i, n, err)
		}
		p.n = n
		pulls[i] = p
	}
	c.replicas[owner].kill9()
	faults.releaseHeld()

	for i, p := range pulls {
		n, err := io.Copy(p.h, p.resp.Body)
		p.resp.Body.Close()
		p.n += n
		got := fmt.Sprintf("sha256:%x", p.h.Sum(nil))
		if i == owner {
			if err == nil {
				t.Errorf("the killed owner's client got a clean end after %d bytes", p.n)
			}
			// Its retry goes to another replica, as a Service would send it.
			other := c.replicas[(owner+1)%len(c.replicas)]
			status, got, n, err := pullBlob(http.DefaultClient, other.url(blobPath))
			if status != http.StatusOK || got != layer.Digest || n != layer.Size || err != nil {
				t.Errorf("the owner's client retrying through another replica: %d, %d bytes %s (%v)", status, n, got, err)
			}
			continue
		}
		if err != nil || got != layer.Digest || p.n != layer.Size {
			t.Errorf("client of replica %d after the owner died: %d bytes %s (%v); want %d bytes %s", i, p.n, got, err, layer.Size, layer.Digest)
		}
	}
	layerKeys := func() (blob, uploads []string) { return blobAndUploadKeys(t, srv, layer.Digest) }
	waitUntil(t, "the layer is committed", func() bool { blob, _ := layerKeys(); return len(blob) == 1 })
	waitUntil(t, "no upload is left", func() bool { _, uploads := layerKeys(); return len(uploads) == 0 })
}

// TestLyingPeer (issue 11): a peer that owns a layer answers with wrong bytes of the right length.
// The client of the replica that asked it never gets a whole response of wrong bytes, the failure
// is counted and logged with the peer's name; the client's retry gets the upstream's verified
// bytes, which are what the cache then holds (one object, served with the right digest).
func TestLyingPeer(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size, _ := strconv.Atoi(r.URL.Query().Get("size"))
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = w.Write(bytes.Repeat([]byte{0}, size))
	}))
	t.Cleanup(liar.Close)
	liarAddr := strings.TrimPrefix(liar.URL, "http://")
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig("")}}, 1, liarAddr)
	pb := c.replicas[0]
	members := append([]string{liarAddr}, c.peerAddrs...)
	// The blobs of every image the fixture pushed: the liar owns none of them once in 256 runs.
	var layer descriptor
	for _, img := range append([]string{f.appDigest}, sortedValues(f.multi.Platforms)...) {
		for _, d := range parseManifest(t, f.upstreamManifest(appRepo+"@"+img)).blobs() {
			if ownerOf(d.Digest, members) == liarAddr {
				layer = d
			}
		}
	}
	if layer.Digest == "" {
		t.Skip("the lying peer owns none of the image's blobs")
	}
	linkManifest(t, pb)
	blobURL := pb.url("/v2/" + upstreamName + "/" + appRepo + "/blobs/" + layer.Digest)
	hex := strings.TrimPrefix(layer.Digest, "sha256:")
	committed := func() int {
		n := 0
		for _, k := range srv.Keys(t) {
			if strings.HasPrefix(k, "blobs/") && strings.Contains(k, hex) {
				n++
			}
		}
		return n
	}

	// The fill through the liar fails before its last byte goes out: the client gets a 502, a cut
	// response, or (Go's transport retries a GET whose reused connection closed before any
	// response) the upstream's bytes; never a whole response of the liar's bytes.
	status, got, n, err := pullBlob(http.DefaultClient, blobURL)
	if status == http.StatusOK && err == nil && got != layer.Digest {
		t.Fatalf("pull through a lying owner: a whole response of %d bytes %s, want %s", n, got, layer.Digest)
	}
	status, got, n, err = pullBlob(http.DefaultClient, blobURL)
	if status != http.StatusOK || got != layer.Digest || n != layer.Size || err != nil {
		t.Fatalf("retry: %d, %d bytes %s (%v); want the upstream's %s", status, n, got, err, layer.Digest)
	}
	waitUntil(t, "the layer is committed", func() bool { return committed() == 1 })
	if status, got, _, err := pullBlob(http.DefaultClient, blobURL); status != http.StatusOK || got != layer.Digest || err != nil {
		t.Fatalf("the cached layer: %d, %s (%v)", status, got, err)
	}
	if m := pb.metrics(t); !strings.Contains(m, "pullbroker_peer_verification_failures_total 1\n") {
		t.Errorf("no peer verification failure counted:\n%s", m)
	}
	if log := pb.logs(t); !strings.Contains(log, "failed verification") || !strings.Contains(log, liarAddr) {
		t.Errorf("the log does not name the lying peer %s", liarAddr)
	}
}

func sortedValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// tagHold is a reverse proxy to the upstream that holds the upstream's answer to the first HEAD of
// one tag's manifest until released: a resolution of the tag in flight for as long as a test
// needs, which answers what the tag meant when it was asked.
type tagHold struct {
	srv     *httptest.Server
	held    chan struct{} // closed once that HEAD arrived
	release chan struct{}
	once    sync.Once
	first   atomic.Bool
}

func newTagHold(t *testing.T, target, repo, tag string) *tagHold {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	h := &tagHold{held: make(chan struct{}), release: make(chan struct{})}
	rp.ModifyResponse = func(resp *http.Response) error {
		r := resp.Request
		if r.Method == http.MethodHead && r.URL.Path == "/v2/"+repo+"/manifests/"+tag && h.first.CompareAndSwap(false, true) {
			close(h.held)
			<-h.release
		}
		return nil
	}
	h.srv = httptest.NewServer(rp)
	t.Cleanup(func() { h.releaseHeld(); h.srv.Close() })
	return h
}

func (h *tagHold) addr() string { return strings.TrimPrefix(h.srv.URL, "http://") }

func (h *tagHold) releaseHeld() { h.once.Do(func() { close(h.release) }) }

// TestStickyTagDecidedOnce (issue 11): a tag under a sticky pin rule, three replicas. Replica A,
// the tag's owner, resolves it first; while its question to the upstream is in flight, the tag
// moves upstream, and replicas B and C are asked for it. All three answer the digest A resolved,
// then and later, and the upstream was asked what the tag means once.
func TestStickyTagDecidedOnce(t *testing.T) {
	const repo, tag = "peers/sticky", "stable"
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	first := testenv.PushTestImage(t, f.upstream.Addr, repo, tag, 1, 64<<10, &f.auth)
	hold := newTagHold(t, f.upstream.Addr, repo, tag)
	counting := newUpstreamProxy(t, hold.addr())
	pins := fmt.Sprintf("  - registry: %q\n    repository: %q\n    tag: %q\n    policy: sticky", upstreamName, repo, tag)
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(counting.endpoint())}, Pins: pins}, 3)
	a := c.owner(tags.Image{Registry: upstreamName, Repository: repo, Tag: tag}.String())
	others := []int{(a + 1) % 3, (a + 2) % 3}

	client := &http.Client{Timeout: time.Minute}
	ask := func(i int) <-chan string {
		answer := make(chan string, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, c.replicas[i].url("/v2/"+upstreamName+"/"+repo+"/manifests/"+tag), nil)
			req.Header.Set("Accept", manifestAccept)
			resp, err := client.Do(req)
			if err != nil {
				answer <- err.Error()
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				answer <- fmt.Sprintf("%s (%v)", resp.Status, err)
				return
			}
			answer <- digestOf(body)
		}()
		return answer
	}

	fromA := ask(a)
	select {
	case <-hold.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the owner never asked the upstream what the tag means")
	}
	moved := testenv.PushTestImage(t, f.upstream.Addr, repo, tag, 2, 64<<10, &f.auth)
	if moved == first {
		t.Fatal("the second push did not move the tag")
	}
	fromOthers := []<-chan string{ask(others[0]), ask(others[1])}
	for _, i := range others {
		waitUntil(t, fmt.Sprintf("replica %d asks the owner", i), func() bool {
			return strings.Contains(c.replicas[i].metrics(t), `pullbroker_peer_forwards_total{kind="manifest"} 1`)
		})
	}
	hold.releaseHeld()

	if got := <-fromA; got != first {
		t.Errorf("replica A (the owner) answered %s, want %s", got, first)
	}
	for j, ch := range fromOthers {
		if got := <-ch; got != first {
			t.Errorf("replica %d, asked after the tag moved, answered %s; want A's %s (moved: %s)", others[j], got, first, moved)
		}
	}
	// Later requests keep the pin, on every replica.
	for i := range c.replicas {
		if got := <-ask(i); got != first {
			t.Errorf("replica %d, asked again, answered %s; want the pinned %s", i, got, first)
		}
	}
	counts := counting.repoCounts(repo)
	t.Logf("upstream requests for %s: %v", repo, counts)
	if counts["HEAD manifest"]+counts["GET manifest"] != 2 || counts["HEAD manifest"] != 1 {
		t.Errorf("the upstream was asked %v; want the tag resolved once (one HEAD, and one GET of its manifest)", counts)
	}
}

// hangingPeer is a peer listener that accepts connections and never answers, as a replica that is
// frozen or stuck does.
type hangingPeer struct {
	ln       net.Listener
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
}

func newHangingPeer(t *testing.T) *hangingPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hangingPeer{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			h.mu.Lock()
			h.conns = append(h.conns, conn)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.conns {
			c.Close()
		}
	})
	return h
}

func (h *hangingPeer) addr() string { return h.ln.Addr().String() }

// TestHangingPeer (issue 11): two replicas and a third peer that accepts connections and never
// answers, and owns the tag pulled. The tag's manifest comes within the first-byte bound; so does
// the first byte of every blob the hanging peer owns (the replica then fetches them from the
// upstream itself, and counts it); every blob has the right digest, is fetched from the upstream
// once and committed once, and no upload is left. The other replica then serves the same image
// with no further upstream blob request.
func TestHangingPeer(t *testing.T) {
	const repo = "peers/hang"
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	hanging := newHangingPeer(t)
	counting := newUpstreamProxy(t, f.upstream.Addr)
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(counting.endpoint())}}, 2, hanging.addr())
	members := append([]string{hanging.addr()}, c.peerAddrs...)

	// A tag the hanging peer owns.
	tag := ""
	for i := 0; tag == ""; i++ {
		if candidate := fmt.Sprintf("v%d", i); ownerOf(tags.Image{Registry: upstreamName, Repository: repo, Tag: candidate}.String(), members) == hanging.addr() {
			tag = candidate
		}
	}
	// An image of which the hanging peer owns some blobs: each push is of new random layers.
	var imageDigest string
	var blobs []descriptor
	hung := map[string]bool{}
	for attempt := 0; len(hung) == 0 && attempt < 5; attempt++ {
		imageDigest = testenv.PushTestImage(t, f.upstream.Addr, repo, tag, 6, 256<<10, &f.auth)
		blobs = parseManifest(t, f.upstreamManifest(repo+"@"+imageDigest)).blobs()
		for _, b := range blobs {
			if ownerOf(b.Digest, members) == hanging.addr() {
				hung[b.Digest] = true
			}
		}
	}
	if len(hung) == 0 {
		t.Skip("the hanging peer owns none of the blobs of five images")
	}

	getManifest := func(pb *pullbroker) {
		t.Helper()
		start := time.Now()
		resp, body := get(t, http.DefaultClient, pb.url("/v2/"+upstreamName+"/"+repo+"/manifests/"+tag))
		if resp.StatusCode != http.StatusOK || digestOf(body) != imageDigest {
			t.Fatalf("manifest through %s: %s, %s; want %s", pb.Addr, resp.Status, digestOf(body), imageDigest)
		}
		t.Logf("manifest through %s: %v", pb.Addr, time.Since(start).Round(time.Millisecond))
		if took, bound := time.Since(start), 2*peers.DefaultByteTimeout; took > bound {
			t.Errorf("the manifest of a tag the hanging peer owns took %v, want it within %v", took, bound)
		}
	}
	getBlobs := func(pb *pullbroker) {
		t.Helper()
		for _, b := range blobs {
			start := time.Now()
			resp, err := http.Get(pb.url("/v2/" + upstreamName + "/" + repo + "/blobs/" + b.Digest))
			if err != nil {
				t.Fatalf("blob %s: %v", b.Digest, err)
			}
			h := sha256.New()
			var first [1]byte
			_, err = io.ReadFull(resp.Body, first[:])
			ttfb := time.Since(start)
			h.Write(first[:])
			n, rerr := io.Copy(h, resp.Body)
			resp.Body.Close()
			if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); resp.StatusCode != http.StatusOK || err != nil || rerr != nil || got != b.Digest || n+1 != b.Size {
				t.Fatalf("blob %s through %s: %s, %d bytes %s (%v, %v)", b.Digest, pb.Addr, resp.Status, n+1, got, err, rerr)
			}
			t.Logf("blob %s (owner %s) through %s: first byte after %v", b.Digest[:19], ownerOf(b.Digest, members), pb.Addr, ttfb.Round(time.Millisecond))
			// The replica waits the bound for the hanging owner, then the upstream answers at once.
			if bound := 2 * peers.DefaultByteTimeout; hung[b.Digest] && ttfb > bound {
				t.Errorf("blob %s, owned by the hanging peer: first byte after %v, want it within %v", b.Digest, ttfb, bound)
			}
		}
	}
	// Replica 1 resolves the tag, and keeps away from the hanging peer for a while after; replica
	// 0, which has not met it yet, is asked for the blobs (the tag's manifest links them in the
	// shared storage).
	getManifest(c.replicas[1])
	getBlobs(c.replicas[0])

	committed := func(dgst string) int {
		n := 0
		for _, k := range srv.Keys(t) {
			if strings.HasPrefix(k, "blobs/") && strings.Contains(k, strings.TrimPrefix(dgst, "sha256:")) {
				n++
			}
		}
		return n
	}
	for _, b := range blobs {
		waitUntil(t, "blob "+b.Digest+" is committed once", func() bool { return committed(b.Digest) == 1 })
	}
	getManifest(c.replicas[1])
	getBlobs(c.replicas[1])
	if counts := counting.repoCounts(repo); counts["GET blob"] != len(blobs) {
		t.Errorf("upstream blob GETs: %d, want one per blob (%d): %v", counts["GET blob"], len(blobs), counts)
	}
	for _, k := range srv.Keys(t) {
		if strings.HasPrefix(k, "uploads/") {
			t.Errorf("an upload is left: %s", k)
		}
	}
	if hanging.accepted.Load() == 0 {
		t.Error("the hanging peer was never asked")
	}
	for i, want := range []string{
		fmt.Sprintf(`pullbroker_peer_owner_unreachable_total{kind="blob"} %d`, len(hung)),
		`pullbroker_peer_owner_unreachable_total{kind="manifest"} 1`,
	} {
		if m := c.replicas[i].metrics(t); !strings.Contains(m, want+"\n") {
			t.Errorf("replica %d does not count its fallbacks: no %s", i, want)
		}
	}
}

// TestPeersOverMutualTLS (issue 11): two replicas whose peer traffic is mutual TLS
// (cluster.peerTLS). A pull through one gets every blob right, those the other owns streamed from
// it, and the upstream sends each blob once; the peer listener does not answer plain HTTP.
func TestPeersOverMutualTLS(t *testing.T) {
	f := newFixture(t)
	srv := testenv.StartS3(t)
	f.secrets.add("s3 secret key", srv.SecretKey, srv.AccessKey)
	counting := newUpstreamProxy(t, f.upstream.Addr)
	certFile, keyFile, caFile := testenv.NewCA(t, "pullbroker peers").Issue(t, t.TempDir(), "peer")
	c := f.startPeerReplicas(t, pbConfig{S3: srv, Upstreams: []upstreamConfig{f.upstreamConfig(counting.endpoint())},
		PeerTLS: fmt.Sprintf("{certFile: %q, keyFile: %q, caFile: %q}", certFile, keyFile, caFile)}, 2)
	blobs := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).blobs()
	forwarded := 0
	for _, b := range blobs {
		if c.owner(b.Digest) == 1 {
			forwarded++
		}
	}
	if forwarded == 0 {
		t.Skip("replica 1 owns none of the image's blobs")
	}
	if err := pullImage(http.DefaultClient, c.replicas[0], appRepo, appTag, f.appDigest); err != nil {
		t.Fatal(err)
	}
	if counts := counting.repoCounts(appRepo); counts["GET blob"] != len(blobs) {
		t.Errorf("upstream blob GETs: %d, want one per blob (%d): %v", counts["GET blob"], len(blobs), counts)
	}
	if want := fmt.Sprintf(`pullbroker_peer_forwards_total{kind="blob"} %d`, forwarded); !strings.Contains(c.replicas[0].metrics(t), want+"\n") {
		t.Errorf("replica 0 did not stream the %d blobs replica 1 owns from it: no %s", forwarded, want)
	}
	if m := c.replicas[0].metrics(t); strings.Contains(m, "pullbroker_peer_owner_unreachable_total{") {
		t.Errorf("replica 0 fell back to the upstream:\n%s", m)
	}
	resp, err := http.Get("http://" + c.peerAddrs[1] + peers.ProtocolPrefix + "blobs/" + blobs[0].Digest)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the peer listener answered plain HTTP")
		}
	}
}
