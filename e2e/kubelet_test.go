package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pullbroker/pullbroker/internal/testenv"
	"github.com/pullbroker/pullbroker/rewrite/webhook"
)

// The node test's settings. Images are the pause program plus 1 MiB of random bytes (one layer of
// about 2.3 MB, and a config): small, and each its own.
const (
	nodeImageExtraBytes = 1 << 20
	// hubName is the upstream's name in pullbroker's config: the docker-registry stands in for
	// Docker Hub, so Pods can say `nginx:1.27` as they would in a real cluster.
	hubName      = "docker.io"
	appsNS       = "apps"
	webNS        = "web"
	pbNS         = "pullbroker"
	nodeName     = "node-1"
	restarts     = 20
	newPods      = 10
	nodeTTL      = 10 * time.Second
	podWait      = 3 * time.Minute
	rewriteLabel = "pullbroker.io/rewrite"
)

// nodeFixture is one real node and everything around it: docker-registry with a login as the
// upstream; a counting proxy between pullbroker and it (upstream), another between the node and it
// for Pods that pull straight from it (direct), and a third between the node and pullbroker
// (nodeSide); an envtest API server holding the upstream's credential as a Secret that pullbroker
// watches; the node's containerd configured by `pullbroker hosts` for docker.io.
type nodeFixture struct {
	t        *testing.T
	sec      *secrets
	auth     testenv.BasicAuth
	registry *testenv.DockerRegistry
	upstream *upstreamProxy
	direct   *upstreamProxy
	nodeSide *upstreamProxy
	kube     *kubernetes.Clientset
	adminKC  string
	pb       *pullbroker
	node     *testenv.Node
	hosts    string
	token    string // admin token file
	results  []nodeResult
}

// nodeResult is one measured row, logged at the end of the test (bench/RESULTS.md quotes them).
type nodeResult struct {
	scenario, path              string
	pulls                       int
	firstPull, medianPull       time.Duration
	upstreamRequests            int
	manifestHEADs, manifestGETs int
	upstreamBytes               int64
}

// TestKubeletPullsThroughPullbroker (issue 14) puts a real kubelet, registered with a real API
// server, in front of pullbroker: the component whose imagePullPolicy makes the requests. One node
// serves every scenario; each scenario's Pods use images of their own, so the counting proxies can
// tell the scenarios apart by repository.
func TestKubeletPullsThroughPullbroker(t *testing.T) {
	testenv.RequireNode(t)
	f := newNodeFixture(t)
	t.Run("private image without imagePullSecrets", f.testPrivateImage)
	t.Run("Always: restarts and new Pods", f.testAlwaysRestarts)
	t.Run("tag moves upstream", f.testTagMoves)
	t.Run("IfNotPresent and Never", f.testIfNotPresentAndNever)
	t.Run("webhook prefix rewrite", f.testWebhook)
	t.Run("upstream stopped", f.testUpstreamStopped)
	for _, r := range f.results {
		t.Logf("RESULT %-34s %-8s pulls=%-3d first=%-8v median=%-8v upstream: requests=%d (manifest HEAD %d, manifest GET %d) bytes=%d",
			r.scenario, r.path, r.pulls, r.firstPull.Round(time.Millisecond), r.medianPull.Round(time.Millisecond),
			r.upstreamRequests, r.manifestHEADs, r.manifestGETs, r.upstreamBytes)
	}
}

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	f := &nodeFixture{t: t, sec: newSecrets()}
	f.auth = testenv.BasicAuth{Username: robotUser, Password: randomSecret("upstream-password")}
	f.sec.add("upstream password", f.auth.Password, f.auth.Username)
	adminToken := randomSecret("admin-token")
	f.sec.add("admin token", adminToken, "")
	f.token = filepath.Join(t.TempDir(), "admin-token")
	writeFile(t, f.token, adminToken+"\n")

	f.registry = testenv.RunDockerRegistry(t, testenv.RegistryOptions{Auth: &f.auth})
	f.upstream = newUpstreamProxy(t, f.registry.Addr)
	f.direct = newUpstreamProxy(t, f.registry.Addr)

	env := testenv.NewAPIServerEnvironment(t)
	restCfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping the API server: %v", err)
		}
	})
	f.kube = kubernetes.NewForConfigOrDie(restCfg)
	f.adminKC = testenv.KubeconfigFile(t, restCfg)
	ctx := t.Context()
	for _, ns := range []string{pbNS, appsNS, webNS} {
		labels := map[string]string{}
		if ns == webNS {
			labels[rewriteLabel] = "on"
		}
		if _, err := f.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Without a controller-manager nobody makes the default ServiceAccount; it has no
		// imagePullSecrets.
		if _, err := f.kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The upstream credential exists in one place: this Secret, which pullbroker watches.
	_, err = f.kube.CoreV1().Secrets(pbNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "registry"},
		Type:       corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": f.auth.Username, "password": f.auth.Password},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	f.pb = startPullbroker(t, f.sec, pbConfig{
		Upstreams: []upstreamConfig{{
			Name: hubName, Endpoint: f.upstream.endpoint(), TagTTL: nodeTTL,
			Secret: pbNS + "/registry", Kubeconfig: f.adminKC,
		}},
		AdminTokenFile: f.token,
	})
	f.nodeSide = newUpstreamProxy(t, f.pb.Addr)

	// The node's containerd: docker.io mirrored by pullbroker as `pullbroker hosts` writes it;
	// pullbroker's own address (image-prefix form) and the upstream's (direct pulls) over plain
	// HTTP.
	f.hosts = t.TempDir()
	writeMirrorHosts(t, f.hosts, hubName, f.nodeSide.addr())
	writePlainHTTPHost(t, f.hosts, f.nodeSide.addr())
	writePlainHTTPHost(t, f.hosts, f.direct.addr())

	start := time.Now()
	f.node = testenv.StartNode(t, testenv.NodeOptions{
		Name:       nodeName,
		Kubeconfig: testenv.NodeKubeconfig(t, env, nodeName),
		HostsDir:   f.hosts,
	})
	for {
		if _, err := f.kube.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("the kubelet did not register node %s:\n%s", nodeName, tail(f.node.KubeletLog()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("node %s registered %v after the kubelet started", nodeName, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log (end):\n%s", tail(f.node.KubeletLog()))
		}
	})
	return f
}

func tail(s string) string {
	const n = 12 << 10
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// addr is the proxy's host:port.
func (p *upstreamProxy) addr() string { return strings.TrimPrefix(p.srv.URL, "http://") }

// writePlainHTTPHost makes containerd reach host (host:port) over plain HTTP.
func writePlainHTTPHost(t *testing.T, dir, host string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, host, "hosts.toml"), fmt.Sprintf(
		"server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host))
}

// push puts a new image (CommandImage) at repo:tag upstream, with the robot's login, and returns
// its digest.
func (f *nodeFixture) push(repo, tag string) string {
	f.t.Helper()
	img := f.node.CommandImage(f.t, nodeImageExtraBytes)
	ref, err := name.NewTag(f.registry.Addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	auth := authn.FromConfig(authn.AuthConfig{Username: f.auth.Username, Password: f.auth.Password})
	if err := remote.Write(ref, img, remote.WithAuth(auth)); err != nil {
		f.t.Fatalf("pushing %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		f.t.Fatal(err)
	}
	return d.String()
}

// directPullSecret creates, in ns, the imagePullSecret that Pods pulling straight from the
// upstream need: the status quo pullbroker removes.
func (f *nodeFixture) directPullSecret(ns string) string {
	f.t.Helper()
	const secretName = "upstream-login"
	if _, err := f.kube.CoreV1().Secrets(ns).Get(f.t.Context(), secretName, metav1.GetOptions{}); err == nil {
		return secretName
	}
	config := fmt.Sprintf(`{"auths":{%q:{"username":%q,"password":%q}}}`, f.direct.addr(), f.auth.Username, f.auth.Password)
	_, err := f.kube.CoreV1().Secrets(ns).Create(f.t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(config)},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return secretName
}

// podSpec is a Pod for the node: hostNetwork (there is no CNI), no ServiceAccount token (there is
// no controller-manager to publish its CA), restartPolicy Always.
func podSpec(name, image string, policy corev1.PullPolicy, args ...string) *corev1.Pod {
	no, grace := false, int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:                      nodeName,
			HostNetwork:                   true,
			RestartPolicy:                 corev1.RestartPolicyAlways,
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "c", Image: image, ImagePullPolicy: policy, Args: args,
				TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			}},
		},
	}
}

func (f *nodeFixture) create(t *testing.T, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := f.kube.CoreV1().Pods(ns).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Pod %s/%s: %v", ns, pod.Name, err)
	}
	return created
}

// waitPod polls the Pod until done says so, and fails with its status and events after podWait.
func (f *nodeFixture) waitPod(t *testing.T, ns, name, what string, done func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(podWait)
	for {
		pod, err := f.kube.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err == nil && done(pod) {
			return pod
		}
		if time.Now().After(deadline) {
			t.Fatalf("Pod %s/%s not %s after %v: %v\nstatus: %+v\nevents:\n%s", ns, name, what, podWait, err,
				pod.Status.ContainerStatuses, strings.Join(f.events(t, ns, name), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func running(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodRunning && len(pod.Status.ContainerStatuses) == 1 &&
		pod.Status.ContainerStatuses[0].State.Running != nil
}

func restarted(n int32) func(*corev1.Pod) bool {
	return func(pod *corev1.Pod) bool {
		return len(pod.Status.ContainerStatuses) == 1 && pod.Status.ContainerStatuses[0].RestartCount >= n
	}
}

// waitReason waits for the Pod's container to be waiting with reason (ErrImagePull,
// ErrImageNeverPull, ImagePullBackOff).
func waitReason(reasons ...string) func(*corev1.Pod) bool {
	return func(pod *corev1.Pod) bool {
		if len(pod.Status.ContainerStatuses) != 1 || pod.Status.ContainerStatuses[0].State.Waiting == nil {
			return false
		}
		return slices.Contains(reasons, pod.Status.ContainerStatuses[0].State.Waiting.Reason)
	}
}

// events are the Pod's events as "Reason: message".
func (f *nodeFixture) events(t *testing.T, ns, pod string) []string {
	t.Helper()
	list, err := f.kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range list.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return out
}

// deletePods removes Pods at once; the kubelet stops their containers.
func (f *nodeFixture) deletePods(t *testing.T, ns string, names ...string) {
	t.Helper()
	zero := int64(0)
	for _, n := range names {
		if err := f.kube.CoreV1().Pods(ns).Delete(t.Context(), n, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Errorf("deleting Pod %s: %v", n, err)
		}
	}
}

// pulls are the node's PullImage calls for image.
func (f *nodeFixture) pulls(image string) []testenv.ImagePull {
	var out []testenv.ImagePull
	for _, p := range f.node.ImagePulls(f.t) {
		if p.Image == image {
			out = append(out, p)
		}
	}
	return out
}

// mark is what a counting proxy had seen of a repository at one moment.
type mark struct {
	at     time.Time
	counts map[string]int
	bytes  int64
}

func markNow(counter *upstreamProxy, repo string) mark {
	return mark{at: time.Now(), counts: counter.repoCounts(repo), bytes: counter.repoBytes(repo)}
}

// record measures a scenario from the node's successful pulls of image since from, and what the
// counting proxy saw of repo since then, and keeps it for the summary.
func (f *nodeFixture) record(scenario, path, image string, counter *upstreamProxy, repo string, from mark) {
	r := nodeResult{scenario: scenario, path: path}
	var durations []time.Duration
	for _, p := range f.pulls(image) {
		if p.Err == "" && !p.Start.Before(from.at) {
			durations = append(durations, p.Duration)
		}
	}
	r.pulls = len(durations)
	if len(durations) > 0 {
		r.firstPull = durations[0]
		rest := slices.Clone(durations)
		if len(rest) > 1 {
			rest = rest[1:]
		}
		slices.Sort(rest)
		r.medianPull = rest[len(rest)/2]
	}
	for k, v := range diff(from.counts, counter.repoCounts(repo)) {
		r.upstreamRequests += v
		switch k {
		case "GET manifest":
			r.manifestGETs = v
		case "HEAD manifest":
			r.manifestHEADs = v
		}
	}
	r.upstreamBytes = counter.repoBytes(repo) - from.bytes
	f.results = append(f.results, r)
}

// diff is after minus before, per key, leaving out zeros.
func diff(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// imageOf is the digest the Pod's container runs, from its status's imageID.
func imageOf(pod *corev1.Pod) string {
	if len(pod.Status.ContainerStatuses) != 1 {
		return ""
	}
	_, digest, _ := strings.Cut(pod.Status.ContainerStatuses[0].ImageID, "@")
	return digest
}

// testPrivateImage: the upstream wants a login, and neither the Pod, its ServiceAccount nor its
// namespace has an imagePullSecret. The credential is only in a Secret in pullbroker's namespace.
func (f *nodeFixture) testPrivateImage(t *testing.T) {
	ctx := t.Context()
	digest := f.push("library/private", "v1")
	image := hubName + "/library/private:v1"
	from := markNow(f.upstream, "library/private")
	f.create(t, appsNS, podSpec("private", image, corev1.PullAlways))
	pod := f.waitPod(t, appsNS, "private", "Running", running)
	if got := imageOf(pod); got != digest {
		t.Errorf("Pod runs %s, upstream has %s", got, digest)
	}
	sa, err := f.kube.CoreV1().ServiceAccounts(appsNS).Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := f.kube.CoreV1().Secrets(appsNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pod.Spec.ImagePullSecrets) != 0 || len(sa.ImagePullSecrets) != 0 || len(secrets.Items) != 0 {
		t.Fatalf("the Pod's namespace has pull credentials: Pod %v, ServiceAccount %v, %d Secrets",
			pod.Spec.ImagePullSecrets, sa.ImagePullSecrets, len(secrets.Items))
	}
	if n := sum(f.nodeSide.repoCounts("library/private")); n == 0 {
		t.Fatal("the node made no request to pullbroker for library/private: the Pod did not pull through it")
	}
	if n := f.upstream.repoCounts("library/private")["GET blob"]; n == 0 {
		t.Fatal("pullbroker fetched no blob of library/private upstream")
	}
	f.record("private image, first pull", "proxy", image, f.upstream, "library/private", from)

	// Straight from the upstream, the same Pod needs an imagePullSecret: without one it fails.
	f.push("library/private-nosecret", "v1")
	f.create(t, appsNS, podSpec("private-direct-nosecret", f.direct.addr()+"/library/private-nosecret:v1", corev1.PullAlways))
	f.waitPod(t, appsNS, "private-direct-nosecret", "refused a pull", waitReason("ErrImagePull", "ImagePullBackOff"))
	f.push("library/private-direct", "v1")
	directImage := f.direct.addr() + "/library/private-direct:v1"
	secretName := f.directPullSecret(appsNS)
	withSecret := podSpec("private-direct", directImage, corev1.PullAlways)
	withSecret.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: secretName}}
	from = markNow(f.direct, "library/private-direct")
	f.create(t, appsNS, withSecret)
	f.waitPod(t, appsNS, "private-direct", "Running", running)
	f.record("private image, first pull", "direct", directImage, f.direct, "library/private-direct", from)
	f.deletePods(t, appsNS, "private-direct-nosecret", "private-direct")
	if err := f.kube.CoreV1().Secrets(appsNS).Delete(ctx, secretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// alwaysCase is one imagePullPolicy: Always variant: a Pod whose container exits at once and is
// restarted, then new Pods of the same image.
type alwaysCase struct {
	label, repo, image string
	counter            *upstreamProxy
	secret             string
	start              mark // before the pin and the first pull
	afterFirst         map[string]int
	firstPullAt        time.Time
}

// testAlwaysRestarts: imagePullPolicy Always makes the kubelet pull at every container start.
// Pinned through pullbroker it costs the upstream nothing after the first pull; with a tag TTL at
// most one HEAD per TTL and no manifest GET; straight from the upstream, every start goes there.
func (f *nodeFixture) testAlwaysRestarts(t *testing.T) {
	cases := []*alwaysCase{
		{label: "pinned", repo: "library/pinned", counter: f.upstream},
		{label: "ttl", repo: "library/ttl", counter: f.upstream},
		{label: "direct", repo: "library/always-direct", counter: f.direct},
	}
	for _, c := range cases {
		f.push(c.repo, "v1")
		if c.label == "direct" {
			c.image = f.direct.addr() + "/" + c.repo + ":v1"
			c.secret = f.directPullSecret(appsNS)
		} else {
			c.image = hubName + "/" + c.repo + ":v1"
		}
	}
	for _, c := range cases {
		c.start = markNow(c.counter, c.repo)
	}
	runCLI(t, f.sec, "pin", "set", hubName+"/library/pinned:v1", "--admin", "http://"+f.pb.Admin, "--token-file", f.token)

	podFor := func(c *alwaysCase, name string, args ...string) *corev1.Pod {
		pod := podSpec(name, c.image, corev1.PullAlways, args...)
		if c.secret != "" {
			pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: c.secret}}
		}
		return pod
	}
	start := time.Now()
	for _, c := range cases {
		f.create(t, appsNS, podFor(c, "restart-"+c.label, "exit"))
	}
	// The baseline for "after the first pull" is taken as soon as the first PullImage returns,
	// well before the kubelet's next start (a second later at the earliest).
	deadline := time.Now().Add(podWait)
	for pending := len(cases); pending > 0; {
		pending = 0
		for _, c := range cases {
			if c.afterFirst != nil {
				continue
			}
			if pulls := f.pulls(c.image); len(pulls) > 0 && pulls[0].Err == "" {
				c.afterFirst, c.firstPullAt = c.counter.repoCounts(c.repo), time.Now()
				continue
			}
			pending++
		}
		if time.Now().After(deadline) {
			t.Fatalf("no first pull after %v: %+v", podWait, f.node.ImagePulls(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range cases {
		f.waitPod(t, appsNS, "restart-"+c.label, fmt.Sprintf("restarted %d times", restarts), restarted(restarts))
	}
	t.Logf("%d restarts of three Pods in %v", restarts, time.Since(start).Round(time.Second))
	var fresh []string
	for i := range newPods {
		for _, c := range cases {
			name := fmt.Sprintf("new-%s-%d", c.label, i)
			f.create(t, appsNS, podFor(c, name))
			fresh = append(fresh, name)
		}
	}
	for _, name := range fresh {
		f.waitPod(t, appsNS, name, "Running", running)
	}
	f.deletePods(t, appsNS, fresh...)
	f.deletePods(t, appsNS, "restart-pinned", "restart-ttl", "restart-direct")

	for _, c := range cases {
		after := diff(c.afterFirst, c.counter.repoCounts(c.repo))
		window := time.Since(c.firstPullAt)
		pulls := len(f.pulls(c.image))
		t.Logf("%s: %d pulls by the kubelet; upstream requests after the first pull in %v: %v", c.label, pulls, window.Round(time.Second), after)
		if pulls < restarts+newPods {
			t.Errorf("%s: the kubelet pulled %d times, want at least %d (imagePullPolicy Always)", c.label, pulls, restarts+newPods)
		}
		switch c.label {
		case "pinned":
			if len(after) != 0 {
				t.Errorf("pinned: %d pulls made upstream requests after the first pull: %v, want none", pulls, after)
			}
		case "ttl":
			maxHeads := int(window/nodeTTL) + 1
			if after["HEAD manifest"] > maxHeads || after["GET manifest"] != 0 || after["GET blob"] != 0 {
				t.Errorf("ttl: upstream after the first pull %v in %v; want at most %d manifest HEADs (one per %v) and no GET",
					after, window.Round(time.Second), maxHeads, nodeTTL)
			}
		case "direct":
			if after["HEAD manifest"] < pulls-1 {
				t.Errorf("direct: %d pulls made only %d manifest HEADs upstream; the baseline is wrong", pulls, after["HEAD manifest"])
			}
		}
		f.record("Always: 20 restarts + 10 new Pods", c.label, c.image, c.counter, c.repo, c.start)
	}
}

// testTagMoves: the tag moves upstream. A pinned tag keeps giving running and new Pods the pinned
// digest; after `pullbroker pin refresh` new Pods get the new one. Straight from the upstream, a
// new Pod gets whatever the tag says now.
func (f *nodeFixture) testTagMoves(t *testing.T) {
	old := f.push("library/moving", "v1")
	image := hubName + "/library/moving:v1"
	from := markNow(f.upstream, "library/moving")
	runCLI(t, f.sec, "pin", "set", image, "--admin", "http://"+f.pb.Admin, "--token-file", f.token)
	f.create(t, appsNS, podSpec("moving-1", image, corev1.PullAlways))
	f.waitPod(t, appsNS, "moving-1", "Running", running)

	moved := f.push("library/moving", "v1")
	f.create(t, appsNS, podSpec("moving-2", image, corev1.PullAlways))
	if got := imageOf(f.waitPod(t, appsNS, "moving-2", "Running", running)); got != old {
		t.Errorf("a new Pod of the pinned tag runs %s after the upstream moved it, want the pinned %s", got, old)
	}
	out := runCLI(t, f.sec, "pin", "refresh", image, "--admin", "http://"+f.pb.Admin, "--token-file", f.token)
	if !strings.Contains(out, old+" -> "+moved) {
		t.Fatalf("pin refresh printed %q, want %s -> %s", out, old, moved)
	}
	f.create(t, appsNS, podSpec("moving-3", image, corev1.PullAlways))
	if got := imageOf(f.waitPod(t, appsNS, "moving-3", "Running", running)); got != moved {
		t.Errorf("a new Pod after pin refresh runs %s, want the new digest %s", got, moved)
	}
	pod, err := f.kube.CoreV1().Pods(appsNS).Get(t.Context(), "moving-1", metav1.GetOptions{})
	if err != nil || imageOf(pod) != old {
		t.Errorf("the first Pod changed image: %s (%v), want %s", imageOf(pod), err, old)
	}
	f.record("tag moves (pinned, then pin refresh)", "proxy", image, f.upstream, "library/moving", from)

	// Straight from the upstream: the new Pod silently runs the new image.
	directOld := f.push("library/moving-direct", "v1")
	directImage := f.direct.addr() + "/library/moving-direct:v1"
	secret := f.directPullSecret(appsNS)
	from = markNow(f.direct, "library/moving-direct")
	d1 := podSpec("moving-direct-1", directImage, corev1.PullAlways)
	d1.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: secret}}
	f.create(t, appsNS, d1)
	f.waitPod(t, appsNS, "moving-direct-1", "Running", running)
	directMoved := f.push("library/moving-direct", "v1")
	d2 := d1.DeepCopy()
	d2.Name = "moving-direct-2"
	f.create(t, appsNS, d2)
	got := imageOf(f.waitPod(t, appsNS, "moving-direct-2", "Running", running))
	t.Logf("straight from the upstream, a new Pod after the tag moved runs %s (was %s)", got, directOld)
	if got != directMoved {
		t.Errorf("direct: a new Pod runs %s, want the moved tag's %s", got, directMoved)
	}
	f.record("tag moves (pinned, then pin refresh)", "direct", directImage, f.direct, "library/moving-direct", from)
	f.deletePods(t, appsNS, "moving-1", "moving-2", "moving-3", "moving-direct-1", "moving-direct-2")
}

// testIfNotPresentAndNever: with the image on the node, IfNotPresent and Never start the
// container without asking anyone; Never without the image refuses; IfNotPresent without it pulls
// once, through pullbroker.
func (f *nodeFixture) testIfNotPresentAndNever(t *testing.T) {
	present := hubName + "/library/private:v1" // pulled by the first scenario
	before := f.nodeSide.repoCounts("library/private")
	pullsBefore := len(f.pulls(present))
	f.create(t, appsNS, podSpec("ifnotpresent-present", present, corev1.PullIfNotPresent))
	f.create(t, appsNS, podSpec("never-present", present, corev1.PullNever))
	f.waitPod(t, appsNS, "ifnotpresent-present", "Running", running)
	f.waitPod(t, appsNS, "never-present", "Running", running)
	if d := diff(before, f.nodeSide.repoCounts("library/private")); len(d) != 0 {
		t.Errorf("IfNotPresent/Never with the image on the node made requests to pullbroker: %v", d)
	}
	if n := len(f.pulls(present)) - pullsBefore; n != 0 {
		t.Errorf("IfNotPresent/Never with the image on the node: %d PullImage calls, want 0", n)
	}
	for _, pod := range []string{"ifnotpresent-present", "never-present"} {
		if ev := strings.Join(f.events(t, appsNS, pod), "\n"); !strings.Contains(ev, "already present on machine") {
			t.Errorf("%s: events do not say the image is already present:\n%s", pod, ev)
		}
	}

	f.push("library/absent", "v1")
	absent := hubName + "/library/absent:v1"
	from := markNow(f.upstream, "library/absent")
	f.create(t, appsNS, podSpec("never-absent", absent, corev1.PullNever))
	f.waitPod(t, appsNS, "never-absent", "refused (ErrImageNeverPull)", waitReason("ErrImageNeverPull"))
	if n := sum(f.nodeSide.repoCounts("library/absent")); n != 0 {
		t.Errorf("Never with the image absent made %d requests to pullbroker", n)
	}
	f.create(t, appsNS, podSpec("ifnotpresent-absent", absent, corev1.PullIfNotPresent))
	f.waitPod(t, appsNS, "ifnotpresent-absent", "Running", running)
	if n := len(f.pulls(absent)); n != 1 {
		t.Errorf("IfNotPresent with the image absent: %d PullImage calls, want 1", n)
	}
	// Never now finds it: the first Pod starts on its next retry.
	f.waitPod(t, appsNS, "never-absent", "Running once the image arrived", running)
	f.record("IfNotPresent, image absent", "proxy", absent, f.upstream, "library/absent", from)
	f.deletePods(t, appsNS, "ifnotpresent-present", "never-present", "never-absent", "ifnotpresent-absent")
}

// testWebhook: a Pod created with `nginx:1.27` is admitted with pullbroker's prefix and the pinned
// digest, the original image in an annotation; the kubelet pulls the rewritten image through
// pullbroker.
func (f *nodeFixture) testWebhook(t *testing.T) {
	ctx := t.Context()
	digest := f.push("library/nginx", "1.27")
	from := markNow(f.upstream, "library/nginx")
	runCLI(t, f.sec, "pin", "set", hubName+"/library/nginx:1.27", "--admin", "http://"+f.pb.Admin, "--token-file", f.token)

	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	url := "https://" + listen + webhook.PathMutate
	fail, ifNeeded, none, timeout := admissionregistrationv1.Fail, admissionregistrationv1.IfNeededReinvocationPolicy, admissionregistrationv1.SideEffectClassNone, int32(5)
	_, err := f.kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "pullbroker"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.pullbroker.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{rewriteLabel: "on"}},
			FailurePolicy:           &fail,
			ReinvocationPolicy:      &ifNeeded,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          &timeout,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Self-signed mode, as deploy/ runs it: the webhook writes its CA into the configuration.
	p := testenv.StartProcess(t, "pullbroker-webhook", exec.Command(pullbrokerBin, "webhook",
		"--config", f.pb.ConfigPath,
		"--listen", listen, "--metrics-listen", "",
		"--proxy-host", f.nodeSide.addr(),
		"--resolve-tags", "--resolver-url", "http://"+f.pb.Addr,
		"--kubeconfig", f.adminKC, "--webhook-config", "pullbroker", "--tls-san", "127.0.0.1",
		"--namespace", pbNS))
	t.Cleanup(func() {
		log, _ := p.Log()
		f.sec.check(t, "webhook log", []byte(log))
	})
	pods := f.kube.CoreV1().Pods(webNS)
	want := f.nodeSide.addr() + "/" + hubName + "/library/nginx:1.27@" + digest
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := pods.Create(ctx, podSpec("probe", "nginx:1.27", corev1.PullAlways), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && got.Spec.Containers[0].Image == want {
			break
		}
		if time.Now().After(deadline) || p.Exited() {
			t.Fatalf("the webhook did not rewrite nginx:1.27 to %s: %v %v\n%s", want, got, err, p.LogTail())
		}
		time.Sleep(200 * time.Millisecond)
	}

	created := f.create(t, webNS, podSpec("nginx", "nginx:1.27", corev1.PullAlways))
	if got := created.Spec.Containers[0].Image; got != want {
		t.Fatalf("admitted with image %s, want %s", got, want)
	}
	originals, err := webhook.OriginalImages(created.Annotations)
	if err != nil || originals["c"] != "nginx:1.27" {
		t.Errorf("original-images annotation %v (%v), want container c = nginx:1.27", created.Annotations, err)
	}
	pod := f.waitPod(t, webNS, "nginx", "Running", running)
	if got := imageOf(pod); got != digest {
		t.Errorf("the Pod runs %s, want %s", got, digest)
	}
	if n := sum(f.nodeSide.repoCounts(hubName + "/library/nginx")); n == 0 {
		t.Error("the node made no request to pullbroker in the image-prefix form")
	}
	f.record("webhook prefix rewrite, first pull", "proxy", want, f.upstream, "library/nginx", from)
	f.deletePods(t, webNS, "nginx")
}

// testUpstreamStopped: with the upstream gone, new Pods of images pullbroker holds still start
// (Always included: pinned, and a TTL tag served stale); an image it never fetched fails with an
// event that says why. Straight from the upstream, an Always Pod cannot start at all.
func (f *nodeFixture) testUpstreamStopped(t *testing.T) {
	f.push("library/uncached", "v1")
	f.registry.Kill(t)
	cached := map[string]string{
		"down-pinned":  hubName + "/library/pinned:v1",
		"down-ttl":     hubName + "/library/ttl:v1",
		"down-private": hubName + "/library/private:v1",
	}
	// The TTL tag's record must be older than the TTL, so its start really asks the upstream.
	time.Sleep(nodeTTL)
	from := map[string]mark{}
	for _, pod := range sortedKeys(cached) {
		from[pod] = markNow(f.upstream, strings.TrimSuffix(strings.TrimPrefix(cached[pod], hubName+"/"), ":v1"))
	}
	directFrom := markNow(f.direct, "library/always-direct")
	for _, pod := range sortedKeys(cached) {
		f.create(t, appsNS, podSpec(pod, cached[pod], corev1.PullAlways))
	}
	uncached := hubName + "/library/uncached:v1"
	f.create(t, appsNS, podSpec("down-uncached", uncached, corev1.PullAlways))
	direct := podSpec("down-direct", f.direct.addr()+"/library/always-direct:v1", corev1.PullAlways)
	direct.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: f.directPullSecret(appsNS)}}
	f.create(t, appsNS, direct)
	for _, pod := range sortedKeys(cached) {
		f.waitPod(t, appsNS, pod, "Running with the upstream stopped", running)
		repo := strings.TrimSuffix(strings.TrimPrefix(cached[pod], hubName+"/"), ":v1")
		f.record("upstream stopped: new Pod, Always", strings.TrimPrefix(pod, "down-"), cached[pod], f.upstream, repo, from[pod])
	}

	// containerd resolves a tag with HEAD and reports only the status line of a failed one:
	// pullbroker's 503 reaches the event, its explanation (an OCI error body) cannot. A GET, as
	// clients that read the body send, shows what the body says.
	f.waitPod(t, appsNS, "down-uncached", "failing to pull", waitReason("ErrImagePull", "ImagePullBackOff"))
	events := strings.Join(f.events(t, appsNS, "down-uncached"), "\n")
	t.Logf("events of the uncached image's Pod:\n%s", events)
	if want := "pulling from host " + f.nodeSide.addr() + " failed with status code [manifests v1]: 503 Service Unavailable"; !strings.Contains(events, want) {
		t.Errorf("the uncached image's pull failure does not carry pullbroker's answer %q:\n%s", want, events)
	}
	resp, body := get(t, &http.Client{Timeout: 30 * time.Second}, f.pb.url("/v2/library/uncached/manifests/v1?ns="+hubName))
	code, message := ociError(t, body)
	t.Logf("GET of the uncached manifest from pullbroker: %s %s: %s", resp.Status, code, message)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(message, "is unavailable") || !strings.Contains(message, "is not cached") {
		t.Errorf("pullbroker's answer for an uncached image with the upstream stopped: %s %s %q", resp.Status, code, message)
	}

	// Straight from the upstream, an Always Pod of an image the node holds cannot start.
	f.waitPod(t, appsNS, "down-direct", "failing to pull", waitReason("ErrImagePull", "ImagePullBackOff"))
	t.Logf("events of the direct Pod:\n%s", strings.Join(f.events(t, appsNS, "down-direct"), "\n"))
	f.record("upstream stopped: new Pod, Always", "direct", direct.Spec.Containers[0].Image, f.direct, "library/always-direct", directFrom)
}
