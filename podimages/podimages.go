// Package podimages tells which images the Pods of a cluster use, as cache
// roots, so that eviction never removes an image a node may pull again at
// any moment (a restart, a new replica on another node).
//
// A shared informer watches the Pods of every namespace that are not
// Succeeded or Failed, each cut down to its containers' images and the
// digests their statuses report. Roots resolves each image to a manifest
// digest without asking any upstream: the digest the reference carries,
// else the one the node reports for the running container, else the
// proxy's own tag record.
package podimages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/kubeclient"
	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

// TagRecords are the proxy's own tag resolutions; *cache.Store has them.
type TagRecords interface {
	GetTag(ctx context.Context, registry, repo, tag string) (cache.Tag, error)
}

// Options are what a Watcher is built from.
type Options struct {
	// Config names the upstreams (and the default one) that image
	// references are resolved against, as the proxy resolves them.
	Config *config.Config
	// Kubeconfig is a kubeconfig path; empty means the in-cluster config.
	Kubeconfig string
	// Tags resolves a tag that neither the reference nor the container
	// status pins to a digest.
	Tags       TagRecords
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Watcher follows the cluster's Pods once started. Roots is safe for
// concurrent use.
type Watcher struct {
	opts   Options
	log    *slog.Logger
	images prometheus.Gauge

	mu           sync.Mutex
	informer     toolscache.SharedIndexInformer // nil until Start
	lastWatchErr time.Time
}

// activePods selects the Pods whose images count: a Succeeded or Failed Pod
// runs nothing and will not run again. The API server filters, so that a
// cluster's finished Jobs cost neither the transfer nor the memory, and a
// Pod that finishes leaves the informer as if deleted.
var activePods = fields.AndSelectors(
	fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
	fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
).String()

// New prepares a Watcher; nothing reads the kubeconfig or talks to the API
// server before Start, so a command that never evicts needs no cluster.
func New(opts Options) *Watcher {
	w := &Watcher{
		opts: opts,
		log:  opts.Logger,
		images: metricsreg.Shared(opts.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_running_images_protected",
			Help: "Images (manifest digests) that Pods of the cluster use and eviction keeps (cache.keepRunningImages), as of the last eviction or GC pass.",
		})),
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w
}

// Start runs the Pod informer until ctx ends. It does not wait for the
// first list: until it arrives, Roots fails and eviction removes nothing.
// Its error is a kubeconfig that cannot be loaded.
func (w *Watcher) Start(ctx context.Context) error {
	kube, err := kubeclient.RESTConfig(w.opts.Kubeconfig)
	if err != nil {
		return fmt.Errorf("cluster.kubeconfig: %w", err)
	}
	kube = rest.CopyConfig(kube)
	kube.UserAgent = "pullbroker"
	// Protobuf: the first list of a large cluster's Pods is several times
	// smaller and cheaper to decode than in JSON.
	kube.ContentType = runtime.ContentTypeProtobuf
	kube.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	// The core/v1 client alone: the full clientset would link every API
	// group into the binary.
	client, err := corev1client.NewForConfig(kube)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	lw := toolscache.NewFilteredListWatchFromClient(client.RESTClient(), "pods", metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = activePods
	})
	inf := toolscache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, toolscache.Indexers{})
	if err := inf.SetTransform(podImages); err != nil {
		return err
	}
	if err := inf.SetWatchErrorHandlerWithContext(w.watchError); err != nil {
		return err
	}
	w.mu.Lock()
	w.informer = inf
	w.mu.Unlock()
	go inf.RunWithContext(ctx)
	return nil
}

// firstListWait is how long Roots waits for the first list of Pods: at
// start, eviction's first pass would otherwise find none and be put off
// until its next round.
const firstListWait = 10 * time.Second

// errNotSynced keeps eviction from removing what a Pod may need before
// the Pods are known.
var errNotSynced = errors.New("the Pods of the cluster are not listed yet (cache.keepRunningImages): " +
	"the API server is unreachable or pullbroker may not list and watch pods in all namespaces (a ClusterRole); see the log")

// Roots are the manifests of the images that the Pods not Succeeded or
// Failed use, each once. An image the proxy does not serve, and a tag the
// proxy holds no record of (it never served it, so holds nothing of it),
// adds none. It fails when the informer has not listed the Pods within
// firstListWait (or ctx), and when a tag record cannot be read.
func (w *Watcher) Roots(ctx context.Context) ([]cache.Root, error) {
	w.mu.Lock()
	inf := w.informer
	w.mu.Unlock()
	if inf == nil {
		return nil, errNotSynced
	}
	if !inf.HasSynced() {
		wait, cancel := context.WithTimeout(ctx, firstListWait)
		defer cancel()
		if !toolscache.WaitForCacheSync(wait.Done(), inf.HasSynced) {
			return nil, errNotSynced
		}
	}
	seen := map[containerImage]bool{}
	roots := map[cache.Root]bool{}
	for _, obj := range inf.GetStore().List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		for _, c := range containerImages(pod) {
			if seen[c] {
				continue
			}
			seen[c] = true
			root, ok, err := w.root(ctx, c.image, c.imageID)
			if err != nil {
				return nil, err
			}
			if ok {
				roots[root] = true
			}
		}
	}
	out := make([]cache.Root, 0, len(roots))
	for r := range roots {
		out = append(out, r)
	}
	w.images.Set(float64(len(out)))
	return out, nil
}

// root resolves one container's image to the manifest it runs.
func (w *Watcher) root(ctx context.Context, image, imageID string) (cache.Root, bool, error) {
	img, ok := proxyImage(w.opts.Config, image)
	if !ok {
		return cache.Root{}, false, nil
	}
	r := cache.Root{Registry: img.Registry, Repository: img.Repository, Digest: img.Digest}
	if r.Digest == "" {
		r.Digest = statusDigest(w.opts.Config, img, imageID)
	}
	if r.Digest == "" {
		t, err := w.opts.Tags.GetTag(ctx, img.Registry, img.Repository, img.Tag)
		if errors.Is(err, cache.ErrNotFound) {
			w.log.Debug("running image has no tag record: nothing cached to keep", "image", img.String())
			return cache.Root{}, false, nil
		}
		if err != nil {
			return cache.Root{}, false, fmt.Errorf("resolving the running image %s: %w", img, err)
		}
		r.Digest = t.Digest
	}
	return r, true, nil
}

// containerImage is an image a container names, and the imageID its
// status reports ("" before the runtime pulled it).
type containerImage struct{ image, imageID string }

// containerImages lists the images of pod's containers, init and ephemeral
// containers included, each with the imageID of its status.
func containerImages(pod *corev1.Pod) []containerImage {
	ids := map[string]string{}
	for _, statuses := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for _, s := range statuses {
			ids[s.Name] = s.ImageID
		}
	}
	var out []containerImage
	for _, c := range pod.Spec.InitContainers {
		out = append(out, containerImage{c.Image, ids[c.Name]})
	}
	for _, c := range pod.Spec.Containers {
		out = append(out, containerImage{c.Image, ids[c.Name]})
	}
	for _, c := range pod.Spec.EphemeralContainers {
		out = append(out, containerImage{c.Image, ids[c.Name]})
	}
	return out
}

// podImages is the informer's transform: it keeps of a Pod only what Roots
// reads (and the informer's key), so that the cache of a large cluster's
// Pods stays small.
func podImages(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown: only its key is used
	}
	slim := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
		},
	}
	for _, c := range pod.Spec.InitContainers {
		slim.Spec.InitContainers = append(slim.Spec.InitContainers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	for _, c := range pod.Spec.Containers {
		slim.Spec.Containers = append(slim.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	for _, c := range pod.Spec.EphemeralContainers {
		slim.Spec.EphemeralContainers = append(slim.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: c.Name, Image: c.Image},
		})
	}
	slim.Status.InitContainerStatuses = slimStatuses(pod.Status.InitContainerStatuses)
	slim.Status.ContainerStatuses = slimStatuses(pod.Status.ContainerStatuses)
	slim.Status.EphemeralContainerStatuses = slimStatuses(pod.Status.EphemeralContainerStatuses)
	return slim, nil
}

func slimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	var out []corev1.ContainerStatus
	for _, s := range in {
		if s.ImageID != "" {
			out = append(out, corev1.ContainerStatus{Name: s.Name, ImageID: s.ImageID})
		}
	}
	return out
}

// watchError logs why the watch dropped, at most every 30 seconds; the
// informer retries with backoff and keeps the Pods it knows meanwhile.
func (w *Watcher) watchError(_ context.Context, _ *toolscache.Reflector, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.lastWatchErr) < 30*time.Second {
		return
	}
	w.lastWatchErr = time.Now()
	w.log.Warn("watch of the cluster's Pods failed (cache.keepRunningImages needs list and watch on pods in all namespaces); retrying", "reason", err.Error())
}
