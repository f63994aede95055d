package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// putImage stores an image of a config and two random 16 KiB layers, as a
// pull of registry/repo:tag through the proxy would, and returns its
// manifest digest followed by the config's and the layers'.
func (c *testCache) putImage(registry, repo, tag string) []digest.Digest {
	c.t.Helper()
	ctx := c.t.Context()
	random := func() string {
		b := make([]byte, 8<<10)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}
	desc := func(mediaType, content string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mediaType, Digest: c.put(content), Size: int64(len(content))}
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: desc(ocispec.MediaTypeImageConfig, fmt.Sprintf(`{"os":"linux","architecture":"amd64","comment":%q}`, random())),
		Layers: []ocispec.Descriptor{desc(ocispec.MediaTypeImageLayerGzip, random()), desc(ocispec.MediaTypeImageLayerGzip, random())}}
	m.SchemaVersion = 2
	body, err := json.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	md := digest.FromBytes(body)
	if err := c.store.PutManifest(ctx, registry, repo, cache.Manifest{Digest: md, MediaType: m.MediaType, Body: body}); err != nil {
		c.t.Fatal(err)
	}
	if err := c.store.PutTag(ctx, registry, repo, tag, cache.Tag{Digest: md, MediaType: m.MediaType, Size: int64(len(body)), ConfirmedAt: time.Now()}); err != nil {
		c.t.Fatal(err)
	}
	return []digest.Digest{md, m.Config.Digest, m.Layers[0].Digest, m.Layers[1].Digest}
}

// scrape sums the series of a counter or gauge family on admin's /metrics.
func scrape(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1 // not listening yet
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

// TestServeKeepsRunningAndLockedImages runs serve with
// cache.keepRunningImages on a cache left by a previous run, over
// storage.maxSizeBytes: eviction keeps the image a Pod runs and the one a
// lock file names, read longest ago, and evicts the others.
func TestServeKeepsRunningAndLockedImages(t *testing.T) {
	rc := testenv.StartAPIServer(t)
	kube := kubernetes.NewForConfigOrDie(rc)
	root := t.TempDir()
	c := newTestCache(t, root)
	running := c.putImage("docker.io", "library/web", "1.0")
	locked := c.putImage("docker.io", "team/locked", "v1")
	for i := range 6 {
		c.putImage("docker.io", fmt.Sprintf("team/idle%d", i), "v1")
	}
	lockFile := filepath.Join(t.TempDir(), "images.lock")
	if err := os.WriteFile(lockFile, []byte("pins:\n  docker.io/team/locked:v1: "+locked[0].String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A previous run's cache: every blob read two hours ago, the kept
	// ones an hour before the rest, so that LRU alone would take them first.
	oldest := map[string]bool{}
	for _, d := range append(running, locked...) {
		oldest[d.Encoded()] = true
	}
	var total int64
	err := filepath.WalkDir(filepath.Join(root, "blobs"), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		when := time.Now().Add(-2 * time.Hour)
		if oldest[filepath.Base(filepath.Dir(p))] {
			when = when.Add(-time.Hour)
		}
		return os.Chtimes(p, when, when)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = kube.CoreV1().Pods(metav1.NamespaceDefault).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "localhost:30500/docker.io/library/web:1.0"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	limit := total / 2
	admin := freeAddr(t)
	_, stop := startServe(t, fmt.Sprintf(`
listen: {addr: %q}
admin: {addr: %q}
storage: {driver: filesystem, parameters: {rootdirectory: %q}, maxSizeBytes: %d}
pins: [{registry: docker.io, repository: team/locked, policy: locked, lockFile: %q}]
cache: {keepRunningImages: true}
cluster: {kubeconfig: %q}
`, freeAddr(t), admin, root, limit, lockFile, testenv.KubeconfigFile(t, rc)))
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()

	deadline := time.Now().Add(30 * time.Second)
	for scrape(t, admin, "pullbroker_evictions_total") <= 0 || int64(scrape(t, admin, "pullbroker_cache_size_bytes")) > limit {
		if time.Now().After(deadline) {
			t.Fatalf("cache not under the limit %d within 30 s: %v bytes", limit, scrape(t, admin, "pullbroker_cache_size_bytes"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, d := range append(running, locked...) {
		if _, err := os.Stat(c.file(d)); err != nil {
			t.Errorf("blob %s of the running or the locked image: %v", d, err)
		}
	}
	if got := scrape(t, admin, "pullbroker_running_images_protected"); got != 1 {
		t.Errorf("pullbroker_running_images_protected = %v, want 1", got)
	}
}

// TestServeNeedsTheKubeconfigOfKeepRunningImages: a kubeconfig that cannot
// be read fails the start, naming the keys.
func TestServeNeedsTheKubeconfigOfKeepRunningImages(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	_, stop := startServe(t, fmt.Sprintf(`
listen: {addr: %q}
admin: {addr: ""}
storage: {driver: inmemory, parameters: {}}
cache: {keepRunningImages: true}
cluster: {kubeconfig: %q}
`, freeAddr(t), missing))
	err := stop()
	if err == nil || !strings.Contains(err.Error(), "cache.keepRunningImages: cluster.kubeconfig") || !strings.Contains(err.Error(), missing) {
		t.Fatalf("serve = %v; want an error naming cache.keepRunningImages, cluster.kubeconfig and the file", err)
	}
}

// TestGCKeepsRunningImages: pullbroker gc with cache.keepRunningImages
// keeps an image that a Pod runs by digest though no tag record names it
// any more (the tag moved on), and removes an old one that nothing runs.
func TestGCKeepsRunningImages(t *testing.T) {
	rc := testenv.StartAPIServer(t)
	kube := kubernetes.NewForConfigOrDie(rc)
	root := t.TempDir()
	c := newTestCache(t, root)
	running := c.putImage("docker.io", "library/web", "1.0")
	forgotten := c.putImage("docker.io", "library/web", "1.0")
	current := c.putImage("docker.io", "library/web", "1.0")
	old := time.Now().Add(-2 * time.Hour)
	for _, d := range append(append(append([]digest.Digest{}, running...), forgotten...), current...) {
		if err := os.Chtimes(c.file(d), old, old); err != nil {
			t.Fatal(err)
		}
	}
	_, err := kube.CoreV1().Pods(metav1.NamespaceDefault).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "localhost:30500/docker.io/library/web@" + running[0].String()}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf("storage: {driver: filesystem, parameters: {rootdirectory: %q}, gc: {grace: 1h}}\n"+
		"cache: {keepRunningImages: true}\ncluster: {kubeconfig: %q}\n", root, testenv.KubeconfigFile(t, rc))), 0o600); err != nil {
		t.Fatal(err)
	}

	out, _, err := runCmd(t, "", "gc", "--config", cfgFile)
	if err != nil {
		t.Fatalf("gc: %v\n%s", err, out)
	}
	for _, d := range append(running, current...) {
		if _, err := os.Stat(c.file(d)); err != nil {
			t.Errorf("blob %s of the running or the tagged image: %v\n%s", d, err, out)
		}
	}
	for _, d := range forgotten {
		if _, err := os.Stat(c.file(d)); err == nil {
			t.Errorf("blob %s of an image nothing runs or tags is still stored\n%s", d, out)
		}
	}
}
