package peers

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/internal/oci"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

const (
	testRegistry = "upstream.test"
	testRepo     = "team/app"
	testToken    = "peer-token-for-tests"
)

// replica is one pullbroker's store, upstream client, resolver and peer
// listener, as cmd wires them, on storage shared with the other replicas.
type replica struct {
	addr     string
	store    *cache.Store
	client   *upstream.Client
	cluster  *Cluster
	resolver *tags.Resolver
	reg      *prometheus.Registry
	logs     *syncBuffer
}

// newListeners reserves n loopback listeners, so that every replica's peer
// set can name all of them before any starts.
func newListeners(t *testing.T, n int) []net.Listener {
	t.Helper()
	lns := make([]net.Listener, n)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
	}
	return lns
}

func tokenFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "peer-token")
	if err := os.WriteFile(path, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// twoListeners reserves the listeners of two replicas and says which of
// them owns key.
func twoListeners(t *testing.T, key string) (lns []net.Listener, members []string, owner int) {
	t.Helper()
	lns = newListeners(t, 2)
	members = []string{lns[0].Addr().String(), lns[1].Addr().String()}
	set := NewSet(nil)
	set.Update(members)
	if set.Owner(key) == members[1] {
		owner = 1
	}
	return lns, members, owner
}

// startReplica serves a replica on ln whose peer set is members.
func startReplica(t *testing.T, ln net.Listener, members []string, driver storagedriver.StorageDriver, up *fakeregistry.Registry, rules ...config.PinRule) *replica {
	t.Helper()
	return startReplicaTLS(t, ln, members, driver, up, nil, rules...)
}

// startReplicaTLS is startReplica with mutual TLS between peers when
// files is set.
func startReplicaTLS(t *testing.T, ln net.Listener, members []string, driver storagedriver.StorageDriver, up *fakeregistry.Registry, files *TLSFiles, rules ...config.PinRule) *replica {
	t.Helper()
	r := &replica{addr: ln.Addr().String(), reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(r.logs, nil))
	var err error
	r.store, err = cache.New(driver, cache.Options{SpoolDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	u := config.Upstream{Name: testRegistry, Endpoint: up.URL(), TagTTL: time.Minute, DialTimeout: time.Second, ResponseTimeout: 5 * time.Second}
	cfg := &config.Config{Mode: config.ModeOnline, Upstreams: []config.Upstream{u}, Pins: rules}
	if r.client, err = upstream.New(u, upstream.Options{}); err != nil {
		t.Fatal(err)
	}
	set, err := StaticSet(r.addr, members)
	if err != nil {
		t.Fatal(err)
	}
	r.cluster, err = New(Options{Set: set, TokenFile: tokenFile(t), ByteTimeout: time.Second, Logger: log, Registerer: r.reg, TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*upstream.Client{u.Name: r.client}
	r.resolver, err = tags.New(tags.Options{Config: cfg, Store: r.store, Upstreams: clients, Owners: r.cluster, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: r.cluster.Handler(Local{Store: r.store, Upstreams: clients, Tags: r.resolver})}
	if tlsConfig := r.cluster.ServerTLS(); tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

func startReplicas(t *testing.T, n int, up *fakeregistry.Registry, rules ...config.PinRule) []*replica {
	t.Helper()
	return startReplicasOn(t, n, inmemory.New(), up, rules...)
}

// startReplicasOn starts n replicas on one storage driver.
func startReplicasOn(t *testing.T, n int, driver storagedriver.StorageDriver, up *fakeregistry.Registry, rules ...config.PinRule) []*replica {
	t.Helper()
	lns := newListeners(t, n)
	var members []string
	for _, ln := range lns {
		members = append(members, ln.Addr().String())
	}
	out := make([]*replica, n)
	for i, ln := range lns {
		out[i] = startReplica(t, ln, members, driver, up, rules...)
	}
	return out
}

// fill runs a fill of layer at r as proxy/blob.go does and returns what a
// reader following it got, or the fill's error.
func (r *replica) fill(t *testing.T, layer v1.Descriptor) ([]byte, error) {
	t.Helper()
	dgst := digest.Digest(layer.Digest.String())
	fromUpstream := func(ctx context.Context) (io.ReadCloser, int64, error) {
		return r.client.GetBlob(ctx, testRepo, dgst)
	}
	f, cached, err := r.store.Fill(dgst, layer.Size, r.cluster.BlobFetcher(testRegistry, testRepo, dgst, layer.Size, fromUpstream))
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if cached {
		b, err := r.store.OpenBlob(ctx, dgst, layer.Size)
		if err != nil {
			return nil, err
		}
		defer b.Content.Close()
		return io.ReadAll(b.Content)
	}
	if _, err := f.Wait(ctx); err != nil {
		return nil, err
	}
	body, err := f.NewReader(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	got, err := io.ReadAll(body)
	if err != nil {
		return got, err
	}
	return got, f.Done(ctx)
}

func pushImage(t *testing.T, up *fakeregistry.Registry, layers int) (v1.Image, []v1.Descriptor) {
	t.Helper()
	img, err := random.Image(64<<10, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	up.Push(testRepo, "v1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return img, m.Layers
}

func layerBytes(t *testing.T, img v1.Image, d v1.Descriptor) []byte {
	t.Helper()
	l, err := img.LayerByDigest(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// slowBlobs makes the upstream wait before answering blob GETs, so that
// fills started together overlap.
func slowBlobs(up *fakeregistry.Registry, d time.Duration) {
	up.SetOverride(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(d)
		}
		return false
	})
}

// TestReplicasFetchEachBlobOnce: three replicas on one storage fill the
// same layers at once; each layer reaches every reader whole and right,
// the upstream sends each layer once, to its owner, and each layer is
// written to storage once, by its owner.
func TestReplicasFetchEachBlobOnce(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 4)
	storage := &blobWrites{StorageDriver: inmemory.New()}
	replicas := startReplicasOn(t, 3, storage, up)
	slowBlobs(up, 300*time.Millisecond)

	var wg sync.WaitGroup
	for _, layer := range layers {
		want := layerBytes(t, img, layer)
		for _, r := range replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, err := r.fill(t, layer)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("replica %s, layer %s: %d bytes (right: %v), %v", r.addr, layer.Digest, len(got), bytes.Equal(got, want), err)
				}
			}()
		}
	}
	wg.Wait()
	forwards := 0.0
	for _, layer := range layers {
		if n := up.Count(http.MethodGet, "/blobs/"+layer.Digest.String()); n != 1 {
			t.Errorf("layer %s: %d upstream GETs from 3 replicas, want 1", layer.Digest, n)
		}
	}
	for _, r := range replicas {
		forwards += testutil.ToFloat64(r.cluster.metrics.forwards.WithLabelValues("blob"))
		if n := testutil.ToFloat64(r.cluster.metrics.ownerUnreachable.WithLabelValues("blob")); n != 0 {
			t.Errorf("replica %s fell back to the upstream %v times", r.addr, n)
		}
	}
	if want := float64(2 * len(layers)); forwards != want {
		t.Errorf("%v blob forwards to owners, want %v (two non-owners per layer)", forwards, want)
	}
	for _, layer := range layers {
		if n := storage.count(layer.Digest.String()); n != 1 {
			t.Errorf("layer %s written to storage %d times, want 1", layer.Digest, n)
		}
	}
}

// blobWrites counts the blobs moved into place in storage, by digest.
type blobWrites struct {
	storagedriver.StorageDriver
	mu     sync.Mutex
	counts map[string]int
}

func (d *blobWrites) Move(ctx context.Context, from, to string) error {
	if rest, ok := strings.CutPrefix(to, "/blobs/"); ok {
		parts := strings.Split(rest, "/") // sha256/ab/<hex>/data
		if len(parts) == 4 {
			d.mu.Lock()
			if d.counts == nil {
				d.counts = map[string]int{}
			}
			d.counts[parts[0]+":"+parts[2]]++
			d.mu.Unlock()
		}
	}
	return d.StorageDriver.Move(ctx, from, to)
}

func (d *blobWrites) count(dgst string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.counts[dgst]
}

// liar is a peer that answers every blob request with handle.
func liar(t *testing.T, handle http.HandlerFunc) (net.Listener, *int) {
	t.Helper()
	ln := newListeners(t, 1)[0]
	var mu sync.Mutex
	hits := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		handle(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln, &hits
}

// ownedBy returns a layer that owner owns in a set of members.
func ownedBy(t *testing.T, owner string, members []string, layers []v1.Descriptor) v1.Descriptor {
	t.Helper()
	s := NewSet(nil)
	s.Update(members)
	for _, l := range layers {
		if s.Owner(l.Digest.String()) == owner {
			return l
		}
	}
	t.Skipf("none of %d layers is owned by %s; push more", len(layers), owner)
	return v1.Descriptor{}
}

// TestLyingOwner: an owner that sends wrong bytes fails the fill (nothing
// committed, nothing whole served), is counted and logged by name, and is
// not asked for that blob again: the next fill gets the upstream's bytes.
func TestLyingOwner(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 8)
	liarLn, liarHits := liar(t, func(w http.ResponseWriter, r *http.Request) {
		size := r.URL.Query().Get("size")
		w.Header().Set("Content-Length", size)
		var n int
		fmt.Sscan(size, &n)
		_, _ = w.Write(bytes.Repeat([]byte{'x'}, n))
	})
	lns := newListeners(t, 1)
	members := []string{lns[0].Addr().String(), liarLn.Addr().String()}
	a := startReplica(t, lns[0], members, inmemory.New(), up)
	layer := ownedBy(t, liarLn.Addr().String(), members, layers)

	got, err := a.fill(t, layer)
	if !errors.Is(err, oci.ErrDigestMismatch) {
		t.Fatalf("fill through a lying owner: %d bytes, %v; want a digest mismatch", len(got), err)
	}
	if len(got) >= int(layer.Size) {
		t.Errorf("a reader got all %d bytes of a blob that failed verification", len(got))
	}
	if _, err := a.store.OpenBlob(context.Background(), digest.Digest(layer.Digest.String()), layer.Size); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("after the lying owner's fill, OpenBlob: %v, want ErrNotFound", err)
	}
	if n := testutil.ToFloat64(a.cluster.metrics.verificationFailure); n != 1 {
		t.Errorf("peer verification failures: %v, want 1", n)
	}
	if !strings.Contains(a.logs.String(), liarLn.Addr().String()) {
		t.Errorf("the log does not name the lying peer %s:\n%s", liarLn.Addr(), a.logs)
	}

	got, err = a.fill(t, layer)
	if err != nil || !bytes.Equal(got, layerBytes(t, img, layer)) {
		t.Fatalf("second fill: %d bytes, %v; want the upstream's verified bytes", len(got), err)
	}
	if *liarHits != 1 {
		t.Errorf("the lying peer was asked %d times, want once", *liarHits)
	}
}

// TestOwnerCutOrHungMidStream: the owner sends part of a blob and dies, or
// sends nothing more; the rest comes from the upstream and the fill
// commits the right bytes.
func TestOwnerCutOrHungMidStream(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 8)
	for name, stop := range map[string]func(*http.Request){
		"cut":  func(*http.Request) { panic(http.ErrAbortHandler) },
		"hung": func(r *http.Request) { <-r.Context().Done() },
	} {
		t.Run(name, func(t *testing.T) {
			var want []byte
			liarLn, _ := liar(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(len(want)))
				_, _ = w.Write(want[:len(want)/3])
				w.(http.Flusher).Flush()
				stop(r)
			})
			lns := newListeners(t, 1)
			members := []string{lns[0].Addr().String(), liarLn.Addr().String()}
			a := startReplica(t, lns[0], members, inmemory.New(), up)
			layer := ownedBy(t, liarLn.Addr().String(), members, layers)
			want = layerBytes(t, img, layer)

			got, err := a.fill(t, layer)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("fill through an owner %s mid-stream: %d bytes (right: %v), %v", name, len(got), bytes.Equal(got, want), err)
			}
			if n := testutil.ToFloat64(a.cluster.metrics.ownerUnreachable.WithLabelValues("blob")); n != 1 {
				t.Errorf("owner-unreachable fallbacks: %v, want 1", n)
			}
			if n := testutil.ToFloat64(a.cluster.metrics.forwardBytes); n != float64(len(want)/3) {
				t.Errorf("bytes from the owner: %v, want %d", n, len(want)/3)
			}
		})
	}
}

// TestOwnerUnreachableOrSilent: an owner that refuses connections, one that
// sends no first byte within the bound, one that answers 5xx and one that
// speaks another protocol version each leave the fill to the upstream.
func TestOwnerUnreachableOrSilent(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 8)
	dead := newListeners(t, 1)[0]
	deadAddr := dead.Addr().String()
	dead.Close()
	silentLn, _ := liar(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	failingLn, _ := liar(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) })
	// A replica of a release that speaks only another protocol version, as in a rolling upgrade.
	otherVersionLn, _ := liar(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Pullbroker-Peer-Protocol", "peer/v2")
		http.Error(w, "this replica speaks /peer/v2/ only", http.StatusNotFound)
	})
	for name, owner := range map[string]string{
		"refused": deadAddr, "silent": silentLn.Addr().String(), "5xx": failingLn.Addr().String(), "another version": otherVersionLn.Addr().String(),
	} {
		t.Run(name, func(t *testing.T) {
			lns := newListeners(t, 1)
			members := []string{lns[0].Addr().String(), owner}
			a := startReplica(t, lns[0], members, inmemory.New(), up)
			layer := ownedBy(t, owner, members, layers)
			got, err := a.fill(t, layer)
			if err != nil || !bytes.Equal(got, layerBytes(t, img, layer)) {
				t.Fatalf("fill with the owner %s: %d bytes, %v", name, len(got), err)
			}
			if n := testutil.ToFloat64(a.cluster.metrics.ownerUnreachable.WithLabelValues("blob")); n != 1 {
				t.Errorf("owner-unreachable fallbacks: %v, want 1", n)
			}
			if name == "refused" {
				if n := a.cluster.livePeers(); n != 1 {
					t.Errorf("live peers after a refused connection: %v, want 1", n)
				}
			}
		})
	}
}

// TestPeerListenerServesOnlyPeers: without the token, with a wrong one, at
// another protocol version or at a registry path, nothing is served.
func TestPeerListenerServesOnlyPeers(t *testing.T) {
	up := fakeregistry.New(t)
	_, layers := pushImage(t, up, 1)
	replicas := startReplicas(t, 1, up)
	blob := "/blobs/" + layers[0].Digest.String() + "?registry=" + testRegistry + "&repository=" + testRepo
	for _, tt := range []struct {
		path, token string
		want        int
	}{
		{"/peer/v1" + blob, "", http.StatusUnauthorized},
		{"/peer/v1" + blob, "wrong", http.StatusUnauthorized},
		{"/peer/v2" + blob, testToken, http.StatusNotFound},
		{"/v2/" + testRegistry + "/" + testRepo + "/blobs/" + layers[0].Digest.String(), testToken, http.StatusNotFound},
		{"/peer/v1" + blob, testToken, http.StatusOK},
	} {
		req, err := http.NewRequest(http.MethodGet, "http://"+replicas[0].addr+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tt.token != "" {
			req.Header.Set("Authorization", "Bearer "+tt.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s with token %q: %s, want %d", tt.path, tt.token, resp.Status, tt.want)
		}
		if resp.StatusCode != http.StatusOK && bytes.Contains(body, []byte(testToken)) {
			t.Errorf("the refusal of %s echoes the token", tt.path)
		}
	}
}

// TestTagResolvedOnceByItsOwner: three replicas asked for one sticky tag at
// once make one upstream HEAD and one GET of it between them, and all
// answer the digest the owner pinned, even after the upstream moved it.
func TestTagResolvedOnceByItsOwner(t *testing.T) {
	up := fakeregistry.New(t)
	img, _ := pushImage(t, up, 1)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	replicas := startReplicas(t, 3, up, config.PinRule{Registry: testRegistry, Repository: "**", Tag: "*", Policy: config.PolicySticky})
	up.SetOverride(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			time.Sleep(200 * time.Millisecond)
		}
		return false
	})
	ref := tags.Image{Registry: testRegistry, Repository: testRepo, Tag: "v1"}
	var wg sync.WaitGroup
	for _, r := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ans, err := r.resolver.Manifest(context.Background(), ref, nil)
			if err != nil || ans.Manifest.Digest.String() != want.String() {
				t.Errorf("replica %s: %s, %v; want %s", r.addr, ans.Manifest.Digest, err, want)
			}
		}()
	}
	wg.Wait()
	if n := up.Count(http.MethodHead, "/manifests/v1"); n != 1 {
		t.Errorf("%d upstream HEADs of the tag from 3 replicas, want 1", n)
	}
	if n := up.Count(http.MethodGet, "/manifests/"); n != 1 {
		t.Errorf("%d upstream manifest GETs from 3 replicas, want 1", n)
	}

	moved, _ := pushImage(t, up, 1)
	movedDigest, _ := moved.Digest()
	for _, r := range replicas {
		ans, err := r.resolver.Manifest(context.Background(), ref, nil)
		if err != nil || ans.Manifest.Digest.String() != want.String() {
			t.Errorf("replica %s after the upstream moved the tag to %s: %s, %v; want the sticky %s", r.addr, movedDigest, ans.Manifest.Digest, err, want)
		}
	}
}

// TestOwnershipIsRendezvous: every replica picks the same owner whatever
// order it lists the peers in, keys spread over the peers, and a peer
// leaving moves only the keys it owned.
func TestOwnershipIsRendezvous(t *testing.T) {
	members := []string{"10.0.0.1:5002", "10.0.0.2:5002", "10.0.0.3:5002"}
	a, b, fewer := NewSet(nil), NewSet(nil), NewSet(nil)
	a.Update(members)
	b.Update([]string{members[2], members[0], members[1], members[0]})
	fewer.Update(members[:2])
	owned := map[string]int{}
	const keys = 3000
	for i := range keys {
		key := digest.FromString(fmt.Sprint(i)).String()
		owner := a.Owner(key)
		owned[owner]++
		if b.Owner(key) != owner {
			t.Fatalf("two orders of the same peers disagree on the owner of %s", key)
		}
		if owner != members[2] && fewer.Owner(key) != owner {
			t.Fatalf("%s moved from %s when %s left", key, owner, members[2])
		}
	}
	for _, m := range members {
		if share := float64(owned[m]) / keys; share < 0.25 || share > 0.42 {
			t.Errorf("%s owns %.0f%% of the keys", m, share*100)
		}
	}
	if a.Owner("k") == "" || NewSet(nil).Owner("k") != "" {
		t.Error("an empty set has an owner, or a full one has none")
	}
}

func TestStaticSetFindsThisReplica(t *testing.T) {
	s, err := StaticSet("127.0.0.1:5002", []string{"127.0.0.1:5001", "127.0.0.1:5002"})
	if err != nil || !s.IsSelf("127.0.0.1:5002") || s.IsSelf("127.0.0.1:5001") || !s.Known() {
		t.Errorf("exact entry: %v", err)
	}
	s, err = StaticSet(":5002", []string{"10.255.255.1:5002", "127.0.0.1:5002"})
	if err != nil || !s.IsSelf("127.0.0.1:5002") || s.IsSelf("10.255.255.1:5002") {
		t.Errorf("a local address on the listener's port: %v", err)
	}
	if _, err := StaticSet(":5002", []string{"10.255.255.1:5002"}); err == nil || !strings.Contains(err.Error(), "cluster.peers") {
		t.Errorf("this replica missing from the list: %v, want an error naming cluster.peers", err)
	}
}

// syncBuffer is a log sink the replica's goroutines write to.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// blobLookups is a storage driver that counts the lookups (Stat, Reader)
// of committed blobs.
type blobLookups struct {
	storagedriver.StorageDriver
	n atomic.Int64
}

func (d *blobLookups) count(path string) {
	if strings.HasPrefix(path, "/blobs/") {
		d.n.Add(1)
	}
}

func (d *blobLookups) Stat(ctx context.Context, path string) (storagedriver.FileInfo, error) {
	d.count(path)
	return d.StorageDriver.Stat(ctx, path)
}

func (d *blobLookups) Reader(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	d.count(path)
	return d.StorageDriver.Reader(ctx, path, offset)
}

// TestOwnerStartsAPeersFetchWithoutLookingAtStorage: the owner of a blob
// that another replica asks for starts its fetch without a look at
// storage: the peer looked a moment ago, and each look is a round trip on
// object storage before the first byte.
func TestOwnerStartsAPeersFetchWithoutLookingAtStorage(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 1)
	layer := layers[0]
	lns, members, owner := twoListeners(t, layer.Digest.String())
	shared := inmemory.New()
	lookups := &blobLookups{StorageDriver: shared}
	var atFetch atomic.Int64
	atFetch.Store(-1)
	up.SetOverride(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layer.Digest.String()) {
			atFetch.CompareAndSwap(-1, lookups.n.Load())
		}
		return false
	})
	startReplica(t, lns[owner], members, lookups, up)
	asking := startReplica(t, lns[1-owner], members, shared, up)

	got, err := asking.fill(t, layer)
	if err != nil || !bytes.Equal(got, layerBytes(t, img, layer)) {
		t.Fatalf("fill through the owner: %d bytes, %v", len(got), err)
	}
	if n := atFetch.Load(); n != 0 {
		t.Errorf("the owner looked at storage %d times before fetching the blob, want 0", n)
	}
}

// TestHangingTagOwner: the owner of a tag accepts the connection and never
// answers. The replica that asked resolves the tag itself once the
// first-byte bound passed (not the upstream's bounds, which a working
// owner may take), counts it, and asks the hanging peer nothing more for
// a while.
func TestHangingTagOwner(t *testing.T) {
	up := fakeregistry.New(t)
	img, _ := pushImage(t, up, 1)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	lns := newListeners(t, 2)
	hanging := lns[1]
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hanging.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	t.Cleanup(func() { hanging.Close() })
	members := []string{lns[0].Addr().String(), hanging.Addr().String()}
	set := NewSet(nil)
	set.Update(members)
	tag := ""
	for i := 0; tag == ""; i++ {
		if candidate := fmt.Sprintf("t%d", i); set.Owner(tags.Image{Registry: testRegistry, Repository: testRepo, Tag: candidate}.String()) == members[1] {
			tag = candidate
		}
	}
	up.Push(testRepo, tag, img)
	r := startReplica(t, lns[0], members, inmemory.New(), up)

	start := time.Now()
	ans, err := r.resolver.Manifest(context.Background(), tags.Image{Registry: testRegistry, Repository: testRepo, Tag: tag}, nil)
	took := time.Since(start)
	if err != nil || ans.Manifest.Digest.String() != want.String() {
		t.Fatalf("resolving a tag the hanging peer owns: %s, %v; want %s", ans.Manifest.Digest, err, want)
	}
	// The bound is a second here (startReplica); a working owner's answer may take 30 s more.
	if took > 10*time.Second {
		t.Errorf("resolving a tag the hanging peer owns took %v", took)
	}
	if n := testutil.ToFloat64(r.cluster.metrics.ownerUnreachable.WithLabelValues("manifest")); n != 1 {
		t.Errorf("owner-unreachable fallbacks for manifests: %v, want 1", n)
	}
	if n := r.cluster.livePeers(); n != 1 {
		t.Errorf("live peers after the owner hung: %d, want 1 (this replica)", n)
	}
}

// TestPeersOverMutualTLS: with cluster.peerTLS, a replica streams a blob
// from its owner over TLS, each showing the other a certificate of the
// peer CA. The peer listener refuses a request over plain HTTP, one
// without a client certificate, and one whose certificate another CA
// signed, even with the token; a replica refuses a server whose
// certificate another CA signed.
func TestPeersOverMutualTLS(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 1)
	layer := layers[0]
	want := layerBytes(t, img, layer)
	lns, members, owner := twoListeners(t, layer.Digest.String())
	ca := testenv.NewCA(t, "peer CA")
	dir := t.TempDir()
	driver := inmemory.New()
	replicas := make([]*replica, 2)
	for i := range replicas {
		var files TLSFiles
		files.CertFile, files.KeyFile, files.CAFile = ca.Issue(t, dir, fmt.Sprintf("replica-%d", i))
		replicas[i] = startReplicaTLS(t, lns[i], members, driver, up, &files)
	}
	asking := replicas[1-owner]

	got, err := asking.fill(t, layer)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("fill through the owner over mutual TLS: %d bytes (right: %v), %v", len(got), bytes.Equal(got, want), err)
	}
	if n := testutil.ToFloat64(asking.cluster.metrics.forwardBytes); n != float64(len(want)) {
		t.Errorf("bytes from the owner: %v, want %d", n, len(want))
	}

	blobURL := "://" + members[owner] + ProtocolPrefix + "blobs/" + layer.Digest.String() + "?registry=" + testRegistry + "&repository=" + testRepo
	get := func(client *http.Client, url string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if status, err := get(http.DefaultClient, "http"+blobURL); err == nil && status == http.StatusOK {
		t.Error("the peer listener answered a request over plain HTTP")
	}
	trustingPeerCA := x509.NewCertPool()
	trustingPeerCA.AddCert(ca.Cert)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: trustingPeerCA, InsecureSkipVerify: true}}}
	if status, err := get(noCert, "https"+blobURL); err == nil {
		t.Errorf("the peer listener answered a client without a certificate: %d", status)
	}
	strangerCert, strangerKey, _ := testenv.NewCA(t, "another CA").Issue(t, t.TempDir(), "stranger")
	pair, err := tls.LoadX509KeyPair(strangerCert, strangerKey)
	if err != nil {
		t.Fatal(err)
	}
	strangerClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}}}
	if status, err := get(strangerClient, "https"+blobURL); err == nil {
		t.Errorf("the peer listener answered a client whose certificate another CA signed: %d", status)
	}

	// A server whose certificate another CA signed is no peer.
	impostor := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	impostor.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	impostor.StartTLS()
	t.Cleanup(impostor.Close)
	if status, err := get(asking.cluster.client, impostor.URL); err == nil {
		t.Errorf("a replica accepted a server whose certificate another CA signed: %d", status)
	}
}

// TestPeerConnectionsAreKept: a replica that streams blobs from their
// owner one after the other, and waits for each commit, does it over one
// connection: a blob's first byte costs no dial.
func TestPeerConnectionsAreKept(t *testing.T) {
	up := fakeregistry.New(t)
	img, layers := pushImage(t, up, 8)
	lns := newListeners(t, 2)
	members := []string{lns[0].Addr().String(), lns[1].Addr().String()}
	shared := inmemory.New()
	startReplica(t, lns[0], members, shared, up)
	asking := startReplica(t, lns[1], members, shared, up)
	var dials atomic.Int64
	transport := asking.cluster.client.Transport.(*http.Transport)
	dialer := &net.Dialer{}
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return dialer.DialContext(ctx, network, addr)
	}
	set := NewSet(nil)
	set.Update(members)
	fills := 0
	for _, layer := range layers {
		if set.Owner(layer.Digest.String()) != members[0] {
			continue
		}
		got, err := asking.fill(t, layer)
		if err != nil || !bytes.Equal(got, layerBytes(t, img, layer)) {
			t.Fatalf("fill of %s through its owner: %d bytes, %v", layer.Digest, len(got), err)
		}
		fills++
	}
	if fills < 2 {
		t.Skipf("%d of %d layers owned by the other replica; push more", fills, len(layers))
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d blobs streamed from their owner, one after the other, dialed it %d times, want 1", fills, n)
	}
}
