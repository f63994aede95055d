package webhook_test

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/rewrite"
	"github.com/pullbroker/pullbroker/rewrite/webhook"
	"github.com/pullbroker/pullbroker/tlsreload"
)

// warningRecorder collects the warnings the API server passes on from
// webhooks.
type warningRecorder struct {
	mu       sync.Mutex
	warnings []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.warnings = append(w.warnings, text)
}

func (w *warningRecorder) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.warnings, "\n")
}

// TestWebhookThroughAPIServer registers the webhook with a real
// kube-apiserver and checks what Pods look like once admitted. A
// go-containerregistry in-memory registry stands in for the proxy: nodes
// would pull from it, and the webhook pins tags by asking it.
func TestWebhookThroughAPIServer(t *testing.T) {
	cfg := testenv.StartAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	warnings := &warningRecorder{}
	cfg.WarningHandler = warnings
	client := kubernetes.NewForConfigOrDie(cfg)

	// The stand-in proxy, holding docker.io/library/nginx:1.27.
	reg := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	regLn := listen(t)
	go func() { _ = reg.Serve(regLn) }()
	t.Cleanup(func() { _ = reg.Close() })
	proxyHost := regLn.Addr().String()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(proxyHost+"/docker.io/library/nginx:1.27", name.Insecure)
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	nginxDigest, _ := img.Digest()

	// The webhook, with certificate files read through tlsreload as in a
	// deployment with cert-manager.
	rw, err := rewrite.New(rewrite.Options{
		ProxyHost: proxyHost,
		Upstreams: config.PublicUpstreams(),
		Resolver:  &rewrite.HTTPResolver{Endpoint: "http://" + proxyHost},
	})
	if err != nil {
		t.Fatal(err)
	}
	handler := webhook.NewHandler(webhook.Options{
		Rewriter: rw,
		Filter:   rewrite.PodFilter{ExcludeNamespaces: []string{"kube-system", "pullbroker"}},
		Logger:   slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	certs, err := webhook.GenerateSelfSigned([]string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := testenv.WriteCertPair(t, dir, certs.CertPEM, certs.KeyPEM)
	reloader, err := tlsreload.New(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	whLn := listen(t)
	wh := &http.Server{Handler: webhook.NewServeMux(handler), TLSConfig: reloader.TLSConfig()}
	go func() { _ = wh.ServeTLS(whLn, "", "") }()
	stopWebhook := sync.OnceFunc(func() { _ = wh.Close() })
	t.Cleanup(stopWebhook)

	// Registered as deploy/ registers it, but by URL, with the caBundle
	// written by InjectCABundle as the self-signed mode does.
	url := "https://" + whLn.Addr().String() + webhook.PathMutate
	ignore, ifNeeded, none := admissionregistrationv1.Ignore, admissionregistrationv1.IfNeededReinvocationPolicy, admissionregistrationv1.SideEffectClassNone
	timeout := int32(5)
	whc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "pullbroker"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.pullbroker.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{
				{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				},
				{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Update},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods/ephemeralcontainers"}},
				},
			},
			FailurePolicy:           &ignore,
			ReinvocationPolicy:      &ifNeeded,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}
	whClient := client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	if _, err := whClient.Create(ctx, whc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if changed, err := webhook.InjectCABundle(ctx, whClient, "pullbroker", certs.CAPEM, time.Now()); err != nil || !changed {
		t.Fatalf("InjectCABundle: changed %v, err %v", changed, err)
	}

	for _, ns := range []string{"apps", "pullbroker", "kube-system"} {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	pods := client.CoreV1().Pods("apps")
	waitForWebhook(ctx, t, pods, proxyHost)

	rewritten := func(image string) string { return proxyHost + "/" + image }
	nginxPinned := rewritten("docker.io/library/nginx:1.27@" + nginxDigest.String())

	t.Run("containers and initContainers", func(t *testing.T) {
		created, err := pods.Create(ctx, pod("web", nil,
			[]string{"busybox:1.36"},
			[]string{"nginx:1.27", "ghcr.io/org/app:v1", "registry.internal.example/app:1"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkImages(t, got.Spec.InitContainers, rewritten("docker.io/library/busybox:1.36"))
		checkImages(t, got.Spec.Containers, nginxPinned, rewritten("ghcr.io/org/app:v1"), "registry.internal.example/app:1")
		originals, err := webhook.OriginalImages(got.Annotations)
		if err != nil || originals["c0"] != "nginx:1.27" || originals["init0"] != "busybox:1.36" || len(originals) != 3 {
			t.Errorf("original-images annotation %q: %v", got.Annotations[rewrite.OriginalImagesAnnotation], err)
		}
		// Tags the stand-in proxy does not hold stay unpinned, and the
		// client is told.
		if w := warnings.all(); !strings.Contains(w, "busybox:1.36 not pinned") {
			t.Errorf("warnings %q, want one about busybox", w)
		}
	})

	t.Run("ephemeral containers through the subresource", func(t *testing.T) {
		created, err := pods.Create(ctx, pod("debug-me", nil, nil, []string{"nginx:1.27"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Spec.EphemeralContainers = append(created.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "nginx:1.27", TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent},
		})
		if _, err := pods.UpdateEphemeralContainers(ctx, created.Name, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.EphemeralContainers) != 1 || got.Spec.EphemeralContainers[0].Image != nginxPinned {
			t.Errorf("ephemeral containers %+v, want one with image %s", got.Spec.EphemeralContainers, nginxPinned)
		}
		checkImages(t, got.Spec.Containers, nginxPinned)
	})

	t.Run("skipped pods are admitted unchanged", func(t *testing.T) {
		for _, tc := range []struct {
			namespace string
			labels    map[string]string
		}{
			{"pullbroker", nil},
			{"kube-system", nil},
			{"apps", map[string]string{rewrite.OptOutKey: rewrite.OptOutValue}},
		} {
			created, err := client.CoreV1().Pods(tc.namespace).Create(ctx, pod("skipped", tc.labels, nil, []string{"nginx:1.27"}), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkImages(t, created.Spec.Containers, "nginx:1.27")
			if _, ok := created.Annotations[rewrite.OriginalImagesAnnotation]; ok {
				t.Errorf("%s %v: annotated", tc.namespace, tc.labels)
			}
		}
	})

	t.Run("webhook down: pods admitted unchanged", func(t *testing.T) {
		stopWebhook()
		created, err := pods.Create(ctx, pod("no-webhook", nil, nil, []string{"nginx:1.27"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("with failurePolicy Ignore the Pod must be admitted: %v", err)
		}
		checkImages(t, created.Spec.Containers, "nginx:1.27")
	})
}

// waitForWebhook dry-runs Pod creations until the API server calls the
// webhook: it reads webhook configurations through an informer, so a new
// one takes a moment to apply.
func waitForWebhook(ctx context.Context, t *testing.T, pods interface {
	Create(context.Context, *corev1.Pod, metav1.CreateOptions) (*corev1.Pod, error)
}, proxyHost string) {
	t.Helper()
	for {
		got, err := pods.Create(ctx, pod("probe", nil, nil, []string{"ghcr.io/probe/probe:1"}), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && strings.HasPrefix(got.Spec.Containers[0].Image, proxyHost+"/") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the webhook never took effect: last error %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func pod(generateName string, labels map[string]string, initImages, images []string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: generateName + "-", Labels: labels}}
	for i, img := range initImages {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "init" + string(rune('0'+i)), Image: img})
	}
	for i, img := range images {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "c" + string(rune('0'+i)), Image: img})
	}
	return p
}

func checkImages(t *testing.T, cs []corev1.Container, want ...string) {
	t.Helper()
	if len(cs) != len(want) {
		t.Errorf("%d containers, want %d", len(cs), len(want))
		return
	}
	for i, c := range cs {
		if c.Image != want[i] {
			t.Errorf("container %s: image %q, want %q", c.Name, c.Image, want[i])
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// testWriter sends the webhook's log to the test log, shown on failure.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
