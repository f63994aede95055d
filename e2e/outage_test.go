package e2e

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestUpstreamKilled (issue 4): once the cache is warm, killing the upstream's process does not
// break a single pull. The tag TTL is one second, so every tag is past it and must be revalidated
// with an upstream that refuses connections: the cached record is served, marked stale.
func TestUpstreamKilled(t *testing.T) {
	f := newFixture(t)
	u := f.upstreamConfig("")
	u.TagTTL = time.Second
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{u}})
	images := f.images()
	for _, ref := range sortedKeys(images) {
		skopeoPull(t, pb.ref(ref), images[ref]) // warms every blob of every platform
	}

	f.upstream.Kill(t)
	if c, err := net.Dial("tcp", f.upstream.Addr); err == nil {
		c.Close()
		t.Fatalf("the upstream %s still accepts connections after kill", f.upstream.Addr)
	}
	time.Sleep(u.TagTTL + 200*time.Millisecond)

	client := &http.Client{Timeout: 30 * time.Second}
	for _, ref := range sortedKeys(images) {
		repo, tag, _ := strings.Cut(ref, ":")
		resp := headManifest(t, client, pb.url("/v2/"+upstreamName+"/"+repo+"/manifests/"+tag))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != images[ref] {
			t.Fatalf("HEAD %s with the upstream dead: %s, digest %q, want 200 %s", ref, resp.Status, resp.Header.Get("Docker-Content-Digest"), images[ref])
		}
		if w := resp.Header.Get("Warning"); !strings.HasPrefix(w, "110 ") {
			t.Errorf("HEAD %s served past its TTL with the upstream dead carries Warning %q, want a 110 (stale) warning", ref, w)
		}
	}

	t.Run("skopeo", func(t *testing.T) {
		for _, ref := range sortedKeys(images) {
			n := skopeoPull(t, pb.ref(ref), images[ref])
			t.Logf("skopeo %s with the upstream dead: %d blobs verified", ref, n)
		}
	})
	t.Run("containerd by prefix", func(t *testing.T) {
		socket := testenv.StartContainerd(t)
		for _, ref := range sortedKeys(images) {
			ctrPullPrefix(t, socket, pb.ref(ref), images[ref])
		}
	})
	t.Run("containerd mirror", func(t *testing.T) {
		socket := testenv.StartContainerd(t)
		hostsDir := mirrorHostsDir(t, pb.Addr)
		for _, ref := range sortedKeys(images) {
			ctrPullMirror(t, socket, hostsDir, ref, images[ref])
		}
	})

	stale := metricValue(t, pb.metrics(t), "pullbroker_cache_requests_total", `kind="tag"`, `result="stale"`)
	t.Logf("tags served stale: %v", stale)
	if stale == 0 {
		t.Error("pullbroker_cache_requests_total{kind=tag,result=stale} is 0 after serving tags with the upstream dead")
	}
}

// TestOfflineMode (issue 4): a second pullbroker on the first one's storage with `mode: offline`
// serves everything cached while its upstream, a listener that counts connections, sees none; a
// miss is a 404 whose message says the upstream is offline.
func TestOfflineMode(t *testing.T) {
	f := newFixture(t)
	storage := t.TempDir()
	online := f.startPullbroker(pbConfig{StorageDir: storage})
	images := f.images()
	for _, ref := range sortedKeys(images) {
		skopeoPull(t, online.ref(ref), images[ref])
	}
	// A tag that exists upstream but was never pulled: offline, it is a miss.
	uncached := testenv.PushTestImage(t, f.upstream.Addr, appRepo, "uncached", 1, 64<<10, &f.auth)

	counter := newConnCounter(t)
	u := f.upstreamConfig(counter.endpoint())
	offline := f.startPullbroker(pbConfig{StorageDir: storage, Mode: "offline", Upstreams: []upstreamConfig{u}})

	for _, ref := range sortedKeys(images) {
		n := skopeoPull(t, offline.ref(ref), images[ref])
		if got := testenv.Crane(t, "digest", "--insecure", offline.ref(ref)); got != images[ref] {
			t.Errorf("crane digest %s offline = %s, want %s", ref, got, images[ref])
		}
		t.Logf("offline: %s pulled, %d blobs verified", ref, n)
	}
	socket := testenv.StartContainerd(t)
	for _, ref := range sortedKeys(images) {
		ctrPullPrefix(t, socket, offline.ref(ref), images[ref])
	}

	client := &http.Client{Timeout: 30 * time.Second}
	base := "/v2/" + upstreamName + "/" + appRepo
	for _, miss := range []struct{ path, code string }{
		{base + "/manifests/uncached", "MANIFEST_UNKNOWN"},
		{base + "/manifests/" + uncached, "MANIFEST_UNKNOWN"},
		{base + "/blobs/" + digestOf([]byte("never pushed")), "BLOB_UNKNOWN"},
	} {
		resp, body := get(t, client, offline.url(miss.path))
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("offline GET %s: %s, want 404", miss.path, resp.Status)
			continue
		}
		code, msg := ociError(t, body)
		if code != miss.code || !strings.Contains(strings.ToLower(msg), "offline") {
			t.Errorf("offline GET %s: %s %q, want %s with a message saying offline", miss.path, code, msg, miss.code)
		}
		t.Logf("offline miss %s: 404 %s %q", miss.path, code, msg)
	}
	if resp := headManifest(t, client, offline.url(base+"/manifests/uncached")); resp.StatusCode != http.StatusNotFound {
		t.Errorf("offline HEAD of an uncached tag: %s, want 404", resp.Status)
	}

	if n := counter.count(); n != 0 {
		t.Errorf("the offline pullbroker opened %d connections to its upstream, want 0", n)
	}
}

// TestAirGapTransfer (issue 4): `pullbroker sync` seeds a running proxy's storage and pins the
// tags, `pullbroker export --pinned` writes them to a tar, `pullbroker import` loads the tar into
// a second proxy whose upstream is offline (and counts connections), and skopeo pulls the same
// digests from the second proxy.
func TestAirGapTransfer(t *testing.T) {
	f := newFixture(t)
	a := f.startPullbroker(pbConfig{})
	images := f.images()
	dir := t.TempDir()

	list := filepath.Join(dir, "images.yaml")
	var yaml strings.Builder
	yaml.WriteString("images:\n")
	for _, ref := range sortedKeys(images) {
		fmt.Fprintf(&yaml, "  - %s/%s\n", upstreamName, ref)
	}
	writeFile(t, list, yaml.String())
	out := runCLI(t, f.secrets, "sync", "--config", a.ConfigPath, "-f", list)
	t.Logf("pullbroker sync:\n%s", out)
	if want := fmt.Sprintf("synced %d of %d images", len(images), len(images)); !strings.Contains(out, want) {
		t.Fatalf("sync output lacks %q", want)
	}
	// sync wrote into the running proxy's storage: its admin API sees the pins.
	pins := runCLI(t, f.secrets, "pin", "list", "--admin", "http://"+a.Admin, "--token-file", f.adminTokenFile)
	for _, ref := range sortedKeys(images) {
		if !regexp.MustCompile(regexp.QuoteMeta(upstreamName+"/"+ref) + `\s+` + images[ref]).MatchString(pins) {
			t.Errorf("pin list of the proxy that was synced lacks %s %s:\n%s", ref, images[ref], pins)
		}
	}

	tarPath := filepath.Join(dir, "x.tar")
	out = runCLI(t, f.secrets, "export", "--config", a.ConfigPath, "--pinned", "-o", tarPath)
	t.Logf("pullbroker export:\n%s", out)

	counter := newConnCounter(t)
	u := f.upstreamConfig(counter.endpoint())
	u.Mode = "offline" // per upstream this time; TestOfflineMode sets it globally
	cfg := pbConfig{StorageDir: t.TempDir(), Upstreams: []upstreamConfig{u}, AdminTokenFile: f.adminTokenFile}
	importConfig := writeConfig(t, cfg, "127.0.0.1:0", "")
	out = runCLI(t, f.secrets, "import", "--config", importConfig, tarPath)
	t.Logf("pullbroker import:\n%s", out)

	b := f.startPullbroker(cfg)
	for _, ref := range sortedKeys(images) {
		n := skopeoPull(t, b.ref(ref), images[ref])
		t.Logf("imported %s pulled from the offline proxy: %d blobs verified", ref, n)
	}
	pins = runCLI(t, f.secrets, "pin", "list", "--admin", "http://"+b.Admin, "--token-file", f.adminTokenFile)
	for _, ref := range sortedKeys(images) {
		if !strings.Contains(pins, images[ref]) {
			t.Errorf("pin list of the proxy imported into lacks %s %s:\n%s", ref, images[ref], pins)
		}
	}
	if n := counter.count(); n != 0 {
		t.Errorf("the offline proxy opened %d connections to its upstream, want 0", n)
	}
}

// metricValue sums the samples of a metric whose labels include every one of labels.
func metricValue(t *testing.T, page, name string, labels ...string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		matches := true
		for _, l := range labels {
			matches = matches && strings.Contains(line, l)
		}
		if !matches {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}
