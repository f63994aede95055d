package podimages_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/podimages"
)

// proxyHost is the proxy's host in the webhook's image-prefix form; the
// watcher is not told it.
const proxyHost = "pullbroker.example:5000"

func loadConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func randomDigest(t *testing.T) digest.Digest {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return digest.FromBytes(b)
}

func container(name, image string) corev1.Container {
	return corev1.Container{Name: name, Image: image}
}

func createPod(t *testing.T, kube kubernetes.Interface, ns, name string, init []corev1.Container, containers ...corev1.Container) *corev1.Pod {
	t.Helper()
	pod, err := kube.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{InitContainers: init, Containers: containers},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// setStatus writes pod's phase and, as a kubelet does once the runtime
// pulled them, the imageIDs of the named containers.
func setStatus(t *testing.T, kube kubernetes.Interface, pod *corev1.Pod, phase corev1.PodPhase, imageIDs map[string]string) *corev1.Pod {
	t.Helper()
	pod = pod.DeepCopy()
	pod.Status.Phase = phase
	pod.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		s := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: imageIDs[c.Name]}
		if phase == corev1.PodSucceeded {
			s.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}
		} else {
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.Now()}
		}
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, s)
	}
	pod, err := kube.CoreV1().Pods(pod.Namespace).UpdateStatus(t.Context(), pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func rootStrings(roots []cache.Root) []string {
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		out = append(out, r.Registry+"/"+r.Repository+"@"+r.Digest.String())
	}
	slices.Sort(out)
	return out
}

// waitForRoots polls w.Roots until it lists exactly want.
func waitForRoots(t *testing.T, w *podimages.Watcher, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var roots []cache.Root
		roots, err = w.Roots(t.Context())
		if got = rootStrings(roots); err == nil && slices.Equal(got, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: Roots = %q (error %v), want %q", what, got, err, want)
}

func newWatcher(t *testing.T, kubeconfig string, records podimages.TagRecords, reg prometheus.Registerer) *podimages.Watcher {
	t.Helper()
	w := podimages.New(podimages.Options{Config: loadConfig(t), Kubeconfig: kubeconfig, Tags: records, Registerer: reg})
	if err := w.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestStartNeedsAKubeconfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	w := podimages.New(podimages.Options{Config: loadConfig(t), Kubeconfig: missing})
	if _, err := w.Roots(t.Context()); err == nil {
		t.Error("Roots before Start did not fail")
	}
	if err := w.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "cluster.kubeconfig") || !strings.Contains(err.Error(), missing) {
		t.Errorf("Start with a missing kubeconfig = %v; want an error naming cluster.kubeconfig and the file", err)
	}
}

func TestRootsFailUntilThePodsAreListed(t *testing.T) {
	// An API server that is not there: a closed loopback port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	dead := testenv.KubeconfigFile(t, &rest.Config{Host: "https://" + ln.Addr().String()})
	store, err := cache.New(inmemory.New(), cache.Options{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher(t, dead, store, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if roots, err := w.Roots(ctx); err == nil || !strings.Contains(err.Error(), "list and watch pods") {
		t.Fatalf("Roots before any list = %v, %v; want an error naming the permission", roots, err)
	}
}

// TestWithAPIServer runs what needs a kube-apiserver against one, each part
// in its own namespace and cleaning up its Pods, since the watcher sees
// every namespace.
func TestWithAPIServer(t *testing.T) {
	rc := testenv.StartAPIServer(t)
	kubeconfig := testenv.KubeconfigFile(t, rc)
	kube := kubernetes.NewForConfigOrDie(rc)
	for name, run := range map[string]func(*testing.T, string, kubernetes.Interface){
		"RootsFollowThePods":         testRootsFollowThePods,
		"EvictionKeepsRunningImages": testEvictionKeepsRunningImages,
	} {
		ns := strings.ToLower(name)
		if _, err := kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) {
			t.Cleanup(func() {
				// Without a kubelet, only a zero grace period removes a Pod.
				err := kube.CoreV1().Pods(ns).DeleteCollection(context.Background(), *metav1.NewDeleteOptions(0), metav1.ListOptions{})
				if err != nil {
					t.Errorf("removing the Pods of %s: %v", ns, err)
				}
			})
			run(t, kubeconfig, kube)
		})
	}
}

// testRootsFollowThePods creates Pods with images in both forms, with and
// without digests, reports imageIDs through the status subresource, ends
// one Pod and deletes another: Roots follows each change.
func testRootsFollowThePods(t *testing.T, kubeconfig string, kube kubernetes.Interface) {
	ns := "rootsfollowthepods"
	ctx := t.Context()
	store, err := cache.New(inmemory.New(), cache.Options{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	record := func(registry, repo, tag string) digest.Digest {
		d := randomDigest(t)
		if err := store.PutTag(ctx, registry, repo, tag, cache.Tag{Digest: d, ConfirmedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		return d
	}
	nginx := record("docker.io", "library/nginx", "1.27")
	tool := record("quay.io", "org/tool", "v2")
	done := record("quay.io", "org/batch", "v1")
	redisRecord := record("docker.io", "library/redis", "7")
	appByDigest := randomDigest(t)
	pauseRan := randomDigest(t)
	redisRan := randomDigest(t)

	reg := prometheus.NewRegistry()
	w := newWatcher(t, kubeconfig, store, reg)

	// The webhook's form, by tag: the tag record says which manifest.
	web := createPod(t, kube, ns, "web", nil, container("nginx", proxyHost+"/docker.io/library/nginx:1.27"))
	// The plain form with a digest: no record needed. An init container's
	// image counts; one whose tag the proxy never served adds nothing; an
	// unserved registry is ignored.
	createPod(t, kube, ns, "app",
		[]corev1.Container{container("setup", "quay.io/org/tool:v2")},
		container("app", "ghcr.io/org/app@"+appByDigest.String()),
		container("sidecar", "busybox:1.36"),
		container("foreign", "registry.invalid/org/thing:1"))
	// Tags the node resolved: the status's imageID wins over the record.
	pause := createPod(t, kube, ns, "pause", nil,
		container("pause", "registry.k8s.io/pause:3.10"),
		container("redis", proxyHost+"/docker.io/library/redis:7"))
	batch := createPod(t, kube, ns, "batch", nil, container("job", "quay.io/org/batch:v1"))

	waitForRoots(t, w, "Pods created",
		"docker.io/library/nginx@"+nginx.String(),
		"quay.io/org/tool@"+tool.String(),
		"ghcr.io/org/app@"+appByDigest.String(),
		"docker.io/library/redis@"+redisRecord.String(),
		"quay.io/org/batch@"+done.String())
	if got := metric(t, reg, "pullbroker_running_images_protected"); got != 5 {
		t.Errorf("pullbroker_running_images_protected = %v, want 5", got)
	}

	setStatus(t, kube, pause, corev1.PodRunning, map[string]string{
		"pause": "registry.k8s.io/pause@" + pauseRan.String(),
		"redis": proxyHost + "/docker.io/library/redis@" + redisRan.String(),
	})
	waitForRoots(t, w, "imageIDs reported",
		"docker.io/library/nginx@"+nginx.String(),
		"quay.io/org/tool@"+tool.String(),
		"ghcr.io/org/app@"+appByDigest.String(),
		"registry.k8s.io/pause@"+pauseRan.String(),
		"docker.io/library/redis@"+redisRan.String(),
		"quay.io/org/batch@"+done.String())

	// A debugging session adds an ephemeral container to a running Pod.
	debug := randomDigest(t)
	app, err := kube.CoreV1().Pods(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	app.Spec.EphemeralContainers = append(app.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name: "debug", Image: proxyHost + "/docker.io/library/debug@" + debug.String(),
			TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent,
		},
	})
	if _, err := kube.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, app.Name, app, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForRoots(t, w, "an ephemeral container added",
		"docker.io/library/nginx@"+nginx.String(),
		"quay.io/org/tool@"+tool.String(),
		"ghcr.io/org/app@"+appByDigest.String(),
		"docker.io/library/debug@"+debug.String(),
		"registry.k8s.io/pause@"+pauseRan.String(),
		"docker.io/library/redis@"+redisRan.String(),
		"quay.io/org/batch@"+done.String())

	batch = setStatus(t, kube, batch, corev1.PodRunning, nil)
	setStatus(t, kube, batch, corev1.PodSucceeded, nil)
	if err := kube.CoreV1().Pods(ns).Delete(ctx, web.Name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	waitForRoots(t, w, "a Pod succeeded and one deleted",
		"quay.io/org/tool@"+tool.String(),
		"ghcr.io/org/app@"+appByDigest.String(),
		"docker.io/library/debug@"+debug.String(),
		"registry.k8s.io/pause@"+pauseRan.String(),
		"docker.io/library/redis@"+redisRan.String())
	if got := metric(t, reg, "pullbroker_running_images_protected"); got != 5 {
		t.Errorf("pullbroker_running_images_protected = %v, want 5", got)
	}
}

// metric is the sum of the samples of the counter or gauge family name
// in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// image is a stored image: its manifest, config and layer digests.
type image struct {
	manifest digest.Digest
	blobs    []digest.Digest
}

func (i image) all() []digest.Digest { return append([]digest.Digest{i.manifest}, i.blobs...) }

// putImage stores an image of two random 16 KiB layers as a pull through
// the proxy would: the blobs through fills, then the manifest, then the
// tag record.
func putImage(t *testing.T, s *cache.Store, registry, repo, tag string) image {
	t.Helper()
	ctx := t.Context()
	fill := func(content []byte) ocispec.Descriptor {
		d := digest.FromBytes(content)
		f, cached, err := s.Fill(d, int64(len(content)), func(context.Context) (io.ReadCloser, int64, error) {
			return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !cached {
			if err := f.Done(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(content))}
	}
	layer := func() ocispec.Descriptor {
		b := make([]byte, 16<<10)
		_, _ = rand.Read(b)
		d := fill(b)
		d.MediaType = ocispec.MediaTypeImageLayerGzip
		return d
	}
	cfgDesc := fill(fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"comment":%q}`, repo))
	cfgDesc.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: []ocispec.Descriptor{layer(), layer()}}
	m.SchemaVersion = 2
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	md := digest.FromBytes(body)
	if err := s.PutManifest(ctx, registry, repo, cache.Manifest{Digest: md, MediaType: m.MediaType, Body: body}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(ctx, registry, repo, tag, cache.Tag{Digest: md, MediaType: m.MediaType, Size: int64(len(body)), ConfirmedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return image{manifest: md, blobs: []digest.Digest{cfgDesc.Digest, m.Layers[0].Digest, m.Layers[1].Digest}}
}

// ageBlobs sets the modification time of every blob under a filesystem
// cache root to two hours ago (an hour earlier for those in oldest), which
// a new Store takes as their last read: as a cache left by a previous run.
func ageBlobs(t *testing.T, root string, oldest []digest.Digest) {
	t.Helper()
	first := map[string]bool{}
	for _, d := range oldest {
		first[d.Encoded()] = true
	}
	err := filepath.WalkDir(filepath.Join(root, "blobs"), func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		when := time.Now().Add(-2 * time.Hour)
		if first[filepath.Base(filepath.Dir(p))] {
			when = when.Add(-time.Hour)
		}
		return os.Chtimes(p, when, when)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func holds(t *testing.T, s *cache.Store, d digest.Digest) bool {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), d, -1)
	if errors.Is(err, cache.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	b.Content.Close()
	return true
}

// testEvictionKeepsRunningImages fills a cache with images, two of them run
// by Pods (one by tag in the prefix form, one by digest in the plain form)
// and read longest ago, so that LRU alone would evict them first. A restart
// with storage.maxSizeBytes at half the cache and the watcher's roots
// settles under the limit and keeps both whole.
func testEvictionKeepsRunningImages(t *testing.T, kubeconfig string, kube kubernetes.Interface) {
	ns := "evictionkeepsrunningimages"
	ctx := t.Context()
	root := t.TempDir()
	driver := filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100})
	before, err := cache.New(driver, cache.Options{LocalRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	web := putImage(t, before, "docker.io", "library/web", "1.0")
	app := putImage(t, before, "ghcr.io", "org/app", "v1")
	var idle []image
	for i := range 8 {
		idle = append(idle, putImage(t, before, "docker.io", fmt.Sprintf("team/idle%d", i), "v1"))
	}
	ageBlobs(t, root, append(web.all(), app.all()...))
	var total int64
	err = filepath.WalkDir(filepath.Join(root, "blobs"), func(_ string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		info, err := de.Info()
		total += info.Size()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	createPod(t, kube, ns, "web", nil, container("web", proxyHost+"/docker.io/library/web:1.0"))
	createPod(t, kube, ns, "app", nil, container("app", "ghcr.io/org/app@"+app.manifest.String()))

	// The restart: a new Store with a limit, whose roots are the watcher's.
	limit := total / 2
	reg := prometheus.NewRegistry()
	var w *podimages.Watcher
	s, err := cache.New(driver, cache.Options{LocalRoot: root, Registerer: reg, MaxSizeBytes: limit,
		Roots: func(ctx context.Context) ([]cache.Root, error) { return w.Roots(ctx) }})
	if err != nil {
		t.Fatal(err)
	}
	w = newWatcher(t, kubeconfig, s, reg)
	waitForRoots(t, w, "the Pods listed", "docker.io/library/web@"+web.manifest.String(), "ghcr.io/org/app@"+app.manifest.String())
	s.Start(ctx)
	// The only replica leads: the walk that measures the cache and the eviction run there.
	leading, stopLeading := context.WithCancel(ctx)
	led := make(chan struct{})
	go func() {
		defer close(led)
		s.Lead(leading)
	}()
	t.Cleanup(func() { // before the storage directory is removed
		stopLeading()
		<-led
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		evicted := metric(t, reg, "pullbroker_evictions_total")
		size := metric(t, reg, "pullbroker_cache_size_bytes")
		if evicted > 0 && int64(size) <= limit {
			t.Logf("%d bytes cached, limit %d: %v blobs evicted, %v bytes left", total, limit, evicted, size)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache not under the limit %d: %v bytes, %v evictions", limit, size, evicted)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, img := range []image{web, app} {
		for _, d := range img.all() {
			if !holds(t, s, d) {
				t.Errorf("blob %s of a running image was evicted", d)
			}
		}
	}
	var gone int
	for _, img := range idle {
		for _, d := range img.all() {
			if !holds(t, s, d) {
				gone++
			}
		}
	}
	if gone == 0 {
		t.Error("no blob of an image nobody runs was evicted")
	}
}
