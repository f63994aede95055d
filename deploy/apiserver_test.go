package deploy_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// warnings collects the API server's warning headers (Pod Security "would
// violate", deprecated fields, unknown fields).
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// minimalCRD is the smallest CRD that lets the API server take objects of
// an operator's kind (ServiceMonitor, Certificate) whose operator is not
// installed here; the real CRDs have full schemas.
func minimalCRD(group, kind, plural string) *apiextensionsv1.CustomResourceDefinition {
	preserve := true
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + "." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Plural: plural, Singular: strings.ToLower(kind), Kind: kind, ListKind: kind + "List",
			},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {Type: "object", XPreserveUnknownFields: &preserve},
					},
				}},
			}},
		},
	}
}

// TestApplyToAPIServer sends every overlay's output to a real kube-apiserver:
// server-side dry-run creates with strict field validation (schema,
// defaulting, admission, Pod Security), then creates the webhook and
// daemonset RBAC for real and asks the authorizer what the ServiceAccounts
// may do.
func TestApplyToAPIServer(t *testing.T) {
	cfg := testenv.StartAPIServer(t,
		minimalCRD("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
		minimalCRD("cert-manager.io", "Certificate", "certificates"))
	warn := &warnings{}
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandlerWithContext = warn
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	builds := []rendered{}
	for _, dir := range allBuilds() {
		builds = append(builds, render(t, dir))
	}
	builds = append(builds, renderWithServiceMonitor(t, "default"), renderWithServiceMonitor(t, "daemonset"))
	// The Helm chart, for every value set its tests render.
	for _, tc := range append(allChartCases(), chartLintOnlyCases...) {
		builds = append(builds, renderChart(t, tc))
	}

	for _, r := range builds {
		t.Run("dry-run/"+r.name, func(t *testing.T) {
			// Namespaced dry runs need the namespace to exist, with this
			// overlay's Pod Security labels.
			applyNamespace(ctx, t, c, r)
			for _, o := range r.objs {
				if o.GetKind() == "Namespace" {
					continue
				}
				err := c.Create(ctx, o.DeepCopy(), client.DryRunAll, client.FieldValidation("Strict"))
				if err != nil {
					t.Errorf("create %s %s: %v", o.GetKind(), o.GetName(), err)
				}
			}
			for _, w := range warn.take() {
				t.Errorf("API server warning: %s", w)
			}
		})
	}

	// For real: the webhook overlay (Deployment layout) and the DaemonSet.
	build := func(name string) rendered {
		for _, r := range builds {
			if r.name == name {
				return r
			}
		}
		t.Fatalf("no build %s", name)
		return rendered{}
	}
	webhookBuild := build(filepath.Join("overlays", "webhook"))
	for _, r := range []rendered{webhookBuild, build(filepath.Join("overlays", "daemonset"))} {
		applyNamespace(ctx, t, c, r)
		for _, o := range r.objs {
			if o.GetKind() == "Namespace" {
				continue
			}
			err := c.Create(ctx, o.DeepCopy(), client.FieldValidation("Strict"))
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
	for _, w := range warn.take() {
		t.Errorf("API server warning: %s", w)
	}

	cs := kubernetes.NewForConfigOrDie(cfg)
	t.Run("rbac", func(t *testing.T) { checkAuthorizer(ctx, t, cs) })
	t.Run("webhook-configuration", func(t *testing.T) { checkStoredWebhook(ctx, t, cs) })
	t.Run("webhook-live", func(t *testing.T) {
		if testing.Short() {
			t.Skip("builds and runs pullbroker webhook")
		}
		runWebhook(ctx, t, cfg, cs, webhookBuild)
	})
	// Last: its ClusterRole lets the proxy list Pods, which the checks
	// above deny.
	t.Run("ha-rbac", func(t *testing.T) {
		// Its RBAC for real; the rest went through the dry run, and its
		// Services would collide with the webhook build's node port.
		r := build(filepath.Join("overlays", "ha"))
		for _, o := range r.objs {
			if !strings.HasSuffix(o.GetKind(), "Role") && !strings.HasSuffix(o.GetKind(), "RoleBinding") {
				continue
			}
			err := c.Create(ctx, o.DeepCopy(), client.FieldValidation("Strict"))
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("create %s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
		for _, w := range warn.take() {
			t.Errorf("API server warning: %s", w)
		}
		checkHAAuthorizer(ctx, t, cs)
	})
}

func applyNamespace(ctx context.Context, t *testing.T, c client.Client, r rendered) {
	t.Helper()
	ns := r.find("Namespace", namespace)
	if ns == nil {
		t.Fatal("no Namespace in the output")
	}
	obj := ns.DeepCopy()
	obj.SetAPIVersion("v1")
	obj.SetKind("Namespace")
	if err := c.Patch(ctx, obj, client.Apply, client.FieldOwner("deploy-test"), client.ForceOwnership); err != nil { //nolint:staticcheck // unstructured apply
		t.Fatalf("apply Namespace: %v", err)
	}
}

// access is one question to the authorizer: may the ServiceAccount sa of
// the pullbroker namespace do verb on the resource?
type access struct {
	sa                                      string
	verb, group, resource, ns, resourceName string
	allowed                                 bool
}

// checkAuthorizer asks the API server's RBAC authorizer, with the rendered
// Roles and bindings in place, what each ServiceAccount may do.
func checkAuthorizer(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	type check = access
	const mwc = "mutatingwebhookconfigurations"
	const adm = "admissionregistration.k8s.io"
	checks := []check{
		// The proxy reads its credential Secrets, in its namespace only.
		{"pullbroker", "get", "", "secrets", namespace, "dockerhub", true},
		{"pullbroker", "list", "", "secrets", namespace, "", true},
		{"pullbroker", "watch", "", "secrets", namespace, "", true},
		{"pullbroker", "list", "", "secrets", "", "", false},
		{"pullbroker", "get", "", "secrets", "default", "x", false},
		{"pullbroker", "list", "", "secrets", "kube-system", "", false},
		{"pullbroker", "create", "", "secrets", namespace, "", false},
		{"pullbroker", "update", "", "secrets", namespace, "dockerhub", false},
		{"pullbroker", "delete", "", "secrets", namespace, "dockerhub", false},
		{"pullbroker", "list", "", "configmaps", namespace, "", false},
		{"pullbroker", "list", "", "pods", namespace, "", false},
		{"pullbroker", "patch", adm, mwc, "", webhookName, false},
		// The webhook patches its one webhook configuration and nothing else.
		{"pullbroker-webhook", "get", adm, mwc, "", webhookName, true},
		{"pullbroker-webhook", "update", adm, mwc, "", webhookName, true},
		{"pullbroker-webhook", "update", adm, mwc, "", "someone-else", false},
		{"pullbroker-webhook", "get", adm, mwc, "", "someone-else", false},
		{"pullbroker-webhook", "list", adm, mwc, "", "", false},
		{"pullbroker-webhook", "delete", adm, mwc, "", webhookName, false},
		{"pullbroker-webhook", "patch", adm, mwc, "", webhookName, false},
		{"pullbroker-webhook", "create", adm, mwc, "", "", false},
		{"pullbroker-webhook", "patch", adm, "validatingwebhookconfigurations", "", webhookName, false},
		{"pullbroker-webhook", "get", "", "secrets", namespace, "dockerhub", false},
		{"pullbroker-webhook", "list", "", "secrets", namespace, "", false},
	}
	authorize(ctx, t, cs, checks)
}

// checkHAAuthorizer: with deploy/overlays/ha applied, the proxy may hold
// its Lease, watch the peers' EndpointSlices in its namespace and Pods
// everywhere, and nothing more.
func checkHAAuthorizer(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	const coord, disc = "coordination.k8s.io", "discovery.k8s.io"
	authorize(ctx, t, cs, []access{
		{"pullbroker", "create", coord, "leases", namespace, "", true},
		{"pullbroker", "get", coord, "leases", namespace, "pullbroker", true},
		{"pullbroker", "update", coord, "leases", namespace, "pullbroker", true},
		{"pullbroker", "get", coord, "leases", namespace, "someone-else", false},
		{"pullbroker", "update", coord, "leases", namespace, "someone-else", false},
		{"pullbroker", "delete", coord, "leases", namespace, "pullbroker", false},
		{"pullbroker", "patch", coord, "leases", namespace, "pullbroker", false},
		{"pullbroker", "list", coord, "leases", namespace, "", false},
		{"pullbroker", "create", coord, "leases", "kube-system", "", false},
		{"pullbroker", "get", coord, "leases", "kube-system", "pullbroker", false},
		{"pullbroker", "list", disc, "endpointslices", namespace, "", true},
		{"pullbroker", "watch", disc, "endpointslices", namespace, "", true},
		{"pullbroker", "list", disc, "endpointslices", "default", "", false},
		{"pullbroker", "update", disc, "endpointslices", namespace, "pullbroker-peers-x", false},
		{"pullbroker", "list", "", "pods", "", "", true},
		{"pullbroker", "watch", "", "pods", "", "", true},
		{"pullbroker", "list", "", "pods", "kube-system", "", true},
		{"pullbroker", "get", "", "pods", "default", "x", false},
		{"pullbroker", "create", "", "pods", namespace, "", false},
		{"pullbroker", "delete", "", "pods", namespace, "x", false},
		{"pullbroker", "list", "", "secrets", "", "", false},
		{"pullbroker", "list", "", "secrets", "default", "", false},
	})
}

func authorize(ctx context.Context, t *testing.T, cs kubernetes.Interface, checks []access) {
	t.Helper()
	sa := func(name string) (string, []string) {
		return "system:serviceaccount:" + namespace + ":" + name,
			[]string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
	}
	for _, ch := range checks {
		user, groups := sa(ch.sa)
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: ch.verb, Group: ch.group, Resource: ch.resource, Namespace: ch.ns, Name: ch.resourceName,
			},
		}}
		got, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Allowed != ch.allowed {
			t.Errorf("%s %s %s/%s in %q name %q: allowed=%v, want %v (%s)", ch.sa, ch.verb, ch.group, ch.resource,
				ch.ns, ch.resourceName, got.Status.Allowed, ch.allowed, got.Status.Reason)
		}
	}
}

// checkStoredWebhook reads the webhook configuration back as the API server
// stored it, and checks that with the webhook unreachable a Pod is still
// admitted unchanged (failurePolicy Ignore).
func checkStoredWebhook(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	got, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhookName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wh := got.Webhooks[0]
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore ||
		wh.ReinvocationPolicy == nil || *wh.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
		t.Errorf("stored webhook %+v", wh)
	}

	// No webhook Pod runs here, so the call fails; Ignore admits the Pod.
	pod := restrictedPod("default", "admitted", "nginx:1.27")
	start := time.Now()
	created, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("Pod creation blocked with the webhook down: %v", err)
	}
	if created.Spec.Containers[0].Image != "nginx:1.27" {
		t.Errorf("image changed to %q", created.Spec.Containers[0].Image)
	}
	if d := time.Since(start); d > time.Duration(*wh.TimeoutSeconds)*time.Second+5*time.Second {
		t.Errorf("Pod creation took %v with the webhook down", d)
	}
}

// runWebhook runs pullbroker webhook with the rendered Deployment's
// arguments and config, as its ServiceAccount (impersonated), against the
// rendered webhook configuration with the Service swapped for a loopback URL
// (no kubelet or kube-proxy here). The webhook must write its caBundle with
// nothing but its ClusterRole, and the selectors must send and keep the
// right Pods to and from it.
func runWebhook(ctx context.Context, t *testing.T, cfg *rest.Config, cs kubernetes.Interface, r rendered) {
	bin := buildPullbroker(t)
	hook := onlyOne(t, "webhook", r.component(t, "webhook"))
	c := hook.pod.Spec.Containers[0]
	proxy := onlyOne(t, "proxy", r.component(t, "proxy"))
	dir := t.TempDir()
	configFileName := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configFileName, []byte(configFile(t, r, proxy, "config")), 0o644); err != nil {
		t.Fatal(err)
	}

	// A kubeconfig that acts as the webhook's ServiceAccount.
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["webhook"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Impersonate:       "system:serviceaccount:" + namespace + ":" + hook.pod.Spec.ServiceAccountName,
		ImpersonateGroups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	kc.Contexts["webhook"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "webhook"}
	kc.CurrentContext = "webhook"
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}

	port, metricsPort := freePort(t), freePort(t)
	var args []string
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--config=") {
			a = "--config=" + configFileName
		}
		args = append(args, a)
	}
	args = append(args, "--kubeconfig="+kubeconfig, "--ca-bundle-resync=1s", "--tls-san=127.0.0.1",
		"--listen=127.0.0.1:"+port, "--metrics-listen=127.0.0.1:"+metricsPort)
	var proxyHost string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--proxy-host="); ok {
			proxyHost = v
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+namespace, "KUBECONFIG=")
	var logs testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	defer func() {
		if t.Failed() {
			t.Logf("pullbroker webhook %q:\n%s", args, logs.String())
		}
	}()

	// Point the stored configuration at the loopback listener, keeping
	// everything else (and without a caBundle: the webhook writes it).
	mwcs := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	stored, err := mwcs.Get(ctx, webhookName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "https://127.0.0.1:" + port + *stored.Webhooks[0].ClientConfig.Service.Path
	stored.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url}
	if _, err := mwcs.Update(ctx, stored, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := mwcs.Get(ctx, webhookName, metav1.GetOptions{})
		if err == nil && len(got.Webhooks[0].ClientConfig.CABundle) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook, as its ServiceAccount, did not write the caBundle in 30s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	optedOutNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted-out", Labels: map[string]string{optOutKey: optOutValue}}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, optedOutNS, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(ns, name string, labels map[string]string) string {
		t.Helper()
		p := restrictedPod(ns, name, "nginx:1.27")
		p.Labels = labels
		// The webhook may not be serving yet right after the caBundle is in.
		var created *corev1.Pod
		for i := 0; i < 50; i++ {
			created, err = cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create Pod %s/%s: %v", ns, name, err)
			}
			if ns != "default" || len(labels) > 0 || created.Spec.Containers[0].Image != p.Spec.Containers[0].Image {
				break
			}
			// Not rewritten: retry once the listener is up.
			_ = cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			time.Sleep(200 * time.Millisecond)
		}
		return created.Spec.Containers[0].Image
	}
	if img := pod("default", "rewritten", nil); !strings.HasPrefix(img, proxyHost+"/") {
		t.Errorf("Pod in default: image %q, want it under --proxy-host %s", img, proxyHost)
	}
	if img := pod("default", "label-opt-out", map[string]string{optOutKey: optOutValue}); img != "nginx:1.27" {
		t.Errorf("Pod labelled %s=%s: image %q, want unchanged", optOutKey, optOutValue, img)
	}
	if img := pod("opted-out", "ns-opt-out", nil); img != "nginx:1.27" {
		t.Errorf("Pod in a namespace labelled %s=%s: image %q, want unchanged", optOutKey, optOutValue, img)
	}
	if img := pod(namespace, "own-namespace", nil); img != "nginx:1.27" {
		t.Errorf("Pod in %s: image %q, want unchanged", namespace, img)
	}

	// Webhook gone: failurePolicy Ignore admits Pods unchanged.
	stop()
	p := restrictedPod("default", "webhook-down", "nginx:1.27")
	created, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("Pod blocked with the webhook stopped: %v", err)
	}
	if img := created.Spec.Containers[0].Image; img != "nginx:1.27" {
		t.Errorf("webhook stopped: image %q", img)
	}
}

// restrictedPod passes the restricted Pod Security level.
func restrictedPod(ns, name, image string) *corev1.Pod {
	no, yes := false, true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   &yes,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "c", Image: image,
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: &no,
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}
