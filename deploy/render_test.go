// Package deploy_test renders the kustomize overlays in deploy/ in-process
// and checks what they would put into a cluster: images, ports, probes,
// security contexts, RBAC, and that the proxy's ConfigMap is a config the
// binary accepts. apiserver_test.go then applies the same output to a real
// kube-apiserver.
package deploy_test

import (
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/pullbroker/pullbroker/config"
)

const (
	namespace    = "pullbroker"
	imageRepo    = "ghcr.io/pullbroker/pullbroker"
	proxyUID     = 65532
	configDir    = "/etc/pullbroker"
	configPath   = configDir + "/config.yaml"
	webhookName  = "pullbroker"
	optOutKey    = "pullbroker.io/rewrite"
	optOutValue  = "false"
	componentKey = "app.kubernetes.io/component"
)

// overlays are the deployable directories under deploy/overlays.
var overlays = []string{"default", "daemonset", "webhook", "ha"}

// examples are the variants under deploy/examples that docs/deploy.md
// points to.
var examples = []string{"webhook-cert-manager", "daemonset-webhook", "ha-webhook"}

// allBuilds are the overlay and example directories, relative to deploy/.
func allBuilds() []string {
	var dirs []string
	for _, o := range overlays {
		dirs = append(dirs, filepath.Join("overlays", o))
	}
	for _, e := range examples {
		dirs = append(dirs, filepath.Join("examples", e))
	}
	return dirs
}

// rendered is one kustomize build: every object, in kustomize's order.
type rendered struct {
	name string
	objs []*unstructured.Unstructured
}

// render builds dir (relative to deploy/) with kustomize, in-process and
// without network access.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	return renderFS(t, filesys.MakeFsOnDisk(), dir)
}

func renderFS(t *testing.T, fs filesys.FileSystem, dir string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fs, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := rendered{name: dir}
	for _, res := range m.Resources() {
		// Through JSON, so numbers are int64 as everywhere in apimachinery.
		b, err := res.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(b); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		r.objs = append(r.objs, obj)
	}
	if len(r.objs) == 0 {
		t.Fatalf("%s rendered nothing", dir)
	}
	return r
}

// renderWithServiceMonitor builds an overlay with the servicemonitor
// component added, the way docs/deploy.md tells users to: in memory, over a
// copy of deploy/, from an overlay next to the real ones.
func renderWithServiceMonitor(t *testing.T, overlay string) rendered {
	t.Helper()
	fs := filesys.MakeFsInMemory()
	for _, dir := range []string{"base", "components", "overlays"} {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return fs.WriteFile(filepath.Join("/deploy", path), b)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: pullbroker
resources:
  - ../%s
components:
  - ../../components/servicemonitor
`, overlay)
	if err := fs.WriteFile("/deploy/overlays/test-monitoring/kustomization.yaml", []byte(k)); err != nil {
		t.Fatal(err)
	}
	r := renderFS(t, fs, "/deploy/overlays/test-monitoring")
	r.name = overlay + "+servicemonitor"
	return r
}

func (r rendered) find(kind, name string) *unstructured.Unstructured {
	for _, o := range r.objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// certificateFor reports whether a cert-manager Certificate in the output
// writes the Secret.
func (r rendered) certificateFor(secret string) bool {
	for _, c := range r.ofKind("Certificate") {
		if name, _, _ := unstructured.NestedString(c.Object, "spec", "secretName"); name == secret {
			return true
		}
	}
	return false
}

func (r rendered) ofKind(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r.objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// typed converts o into a typed API object, failing on any field the type
// does not have (a misspelt or misplaced field would otherwise be dropped).
func typed[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return out
}

// workload is a Deployment's or DaemonSet's Pod template.
type workload struct {
	kind, name string
	pod        corev1.PodTemplateSpec
}

func (w workload) String() string { return w.kind + "/" + w.name }

func (r rendered) workloads(t *testing.T) []workload {
	t.Helper()
	var out []workload
	for _, o := range r.objs {
		switch o.GetKind() {
		case "Deployment":
			d := typed[appsv1.Deployment](t, o)
			out = append(out, workload{"Deployment", d.Name, d.Spec.Template})
		case "DaemonSet":
			d := typed[appsv1.DaemonSet](t, o)
			out = append(out, workload{"DaemonSet", d.Name, d.Spec.Template})
		case "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod":
			t.Errorf("%s: unexpected %s %s", r.name, o.GetKind(), o.GetName())
		}
	}
	return out
}

func (r rendered) component(t *testing.T, component string) []workload {
	var out []workload
	for _, w := range r.workloads(t) {
		if w.pod.Labels[componentKey] == component {
			out = append(out, w)
		}
	}
	return out
}

// onlyOne returns the single element of ws, failing otherwise.
func onlyOne(t *testing.T, what string, ws []workload) workload {
	t.Helper()
	if len(ws) != 1 {
		t.Fatalf("want exactly one %s workload, got %v", what, ws)
	}
	return ws[0]
}

func containerPort(t *testing.T, c corev1.Container, port intstr.IntOrString) int32 {
	t.Helper()
	if port.Type == intstr.Int {
		return port.IntVal
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort
		}
	}
	t.Errorf("container %s has no port named %q", c.Name, port.StrVal)
	return 0
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

var clusterScoped = map[string]bool{
	"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"MutatingWebhookConfiguration": true, "ValidatingWebhookConfiguration": true,
	"CustomResourceDefinition": true,
}

func TestOverlaysRender(t *testing.T) {
	for _, dir := range allBuilds() {
		t.Run(dir, func(t *testing.T) {
			checkCommon(t, render(t, dir))
		})
	}
	t.Run("default+servicemonitor", func(t *testing.T) {
		r := renderWithServiceMonitor(t, "default")
		checkCommon(t, r)
		checkServiceMonitor(t, r)
	})
	t.Run("daemonset+servicemonitor", func(t *testing.T) {
		r := renderWithServiceMonitor(t, "daemonset")
		checkCommon(t, r)
		checkServiceMonitor(t, r)
	})
}

// checkCommon holds for every rendering: namespaces, images, Pod and
// container security, resources, references between objects, RBAC.
func checkCommon(t *testing.T, r rendered) {
	seen := map[string]bool{}
	for _, o := range r.objs {
		key := o.GetAPIVersion() + "/" + o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
		if seen[key] {
			t.Errorf("duplicate object %s", key)
		}
		seen[key] = true
		if clusterScoped[o.GetKind()] {
			if o.GetNamespace() != "" {
				t.Errorf("cluster-scoped %s %s has namespace %q", o.GetKind(), o.GetName(), o.GetNamespace())
			}
		} else if o.GetNamespace() != namespace {
			t.Errorf("%s %s is in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), namespace)
		}
		if o.GetKind() == "Secret" {
			t.Errorf("the manifests must not carry a Secret (%s)", o.GetName())
		}
		if o.GetLabels()["app.kubernetes.io/part-of"] != "pullbroker" {
			t.Errorf("%s %s lacks label app.kubernetes.io/part-of=pullbroker", o.GetKind(), o.GetName())
		}
	}
	if r.find("Namespace", namespace) == nil {
		t.Errorf("no Namespace %s", namespace)
	}

	ws := r.workloads(t)
	if len(ws) == 0 {
		t.Fatal("no workloads")
	}
	image := ""
	for _, w := range ws {
		checkPodSecurity(t, r, w)
		for _, c := range w.pod.Spec.Containers {
			repo, tag, ok := strings.Cut(c.Image, ":")
			if !ok || repo != imageRepo || tag == "" || tag == "latest" {
				t.Errorf("%s container %s: image %q, want %s:<pinned tag or digest>", w, c.Name, c.Image, imageRepo)
			}
			if image == "" {
				image = c.Image
			} else if c.Image != image {
				t.Errorf("%s container %s: image %q differs from %q", w, c.Name, c.Image, image)
			}
		}
	}
	checkServices(t, r, ws)
	checkRBAC(t, r, ws)
	checkNetworkPolicies(t, r, ws)

	for _, w := range r.component(t, "proxy") {
		checkProxy(t, r, w)
	}
	if len(r.component(t, "proxy")) != 1 {
		t.Errorf("want one proxy workload, got %v", r.component(t, "proxy"))
	}
	for _, pdb := range r.ofKind("PodDisruptionBudget") {
		sel, _, _ := unstructured.NestedStringMap(pdb.Object, "spec", "selector", "matchLabels")
		n := 0
		for _, w := range ws {
			if w.kind == "Deployment" && selects(sel, w.pod.Labels) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("PodDisruptionBudget %s selects %d Deployments, want 1", pdb.GetName(), n)
		}
	}
}

func checkPodSecurity(t *testing.T, r rendered, w workload) {
	spec := w.pod.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.RunAsUser == nil || *psc.RunAsUser != proxyUID ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: Pod securityContext %+v, want runAsNonRoot, runAsUser %d, seccomp RuntimeDefault", w, psc, proxyUID)
	}
	if spec.HostPID || spec.HostIPC {
		t.Errorf("%s: hostPID/hostIPC set", w)
	}
	if spec.HostNetwork && w.kind != "DaemonSet" {
		t.Errorf("%s: hostNetwork outside the per-node DaemonSet", w)
	}
	if spec.ServiceAccountName == "" || r.find("ServiceAccount", spec.ServiceAccountName) == nil {
		t.Errorf("%s: ServiceAccount %q is not in the output", w, spec.ServiceAccountName)
	}
	if len(spec.InitContainers) > 0 || len(spec.EphemeralContainers) > 0 {
		t.Errorf("%s: unexpected init or ephemeral containers", w)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("%s: hostPath volume %s", w, v.Name)
		}
		if v.Secret != nil {
			t.Errorf("%s: secret volume %s: use an optional projected source", w, v.Name)
		}
		if v.ConfigMap != nil && r.find("ConfigMap", v.ConfigMap.Name) == nil {
			t.Errorf("%s: volume %s names ConfigMap %q, not in the output", w, v.Name, v.ConfigMap.Name)
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil && r.find("ConfigMap", s.ConfigMap.Name) == nil {
					t.Errorf("%s: volume %s names ConfigMap %q, not in the output", w, v.Name, s.ConfigMap.Name)
				}
				if s.Secret != nil && (s.Secret.Optional == nil || !*s.Secret.Optional) && !r.certificateFor(s.Secret.Name) &&
					!documentedSecrets(t)[s.Secret.Name] {
					t.Errorf("%s: volume %s: Secret %q must be optional, made by a Certificate in the output, "+
						"or created as docs/deploy.md says", w, v.Name, s.Secret.Name)
				}
			}
		}
		if v.EmptyDir != nil && v.EmptyDir.SizeLimit == nil {
			t.Errorf("%s: emptyDir %s has no sizeLimit", w, v.Name)
		}
	}
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s container %s: no securityContext", w, c.Name)
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s container %s: allowPrivilegeEscalation must be false", w, c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s container %s: readOnlyRootFilesystem must be true", w, c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s container %s: privileged", w, c.Name)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s container %s: capabilities %+v, want drop [ALL] and no add", w, c.Name, sc.Capabilities)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser != proxyUID {
			t.Errorf("%s container %s: runAsUser %d", w, c.Name, *sc.RunAsUser)
		}
		if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s container %s: seccomp %s", w, c.Name, sc.SeccompProfile.Type)
		}
		req, lim := c.Resources.Requests, c.Resources.Limits
		if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
			t.Errorf("%s container %s: want cpu and memory requests and a memory limit, got %+v", w, c.Name, c.Resources)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("%s container %s: want readiness and liveness probes", w, c.Name)
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				continue
			}
			// Only the AWS default chain takes its credentials from the
			// environment; every other secret is a file.
			if ref := e.ValueFrom.SecretKeyRef; !awsCredentialEnv[e.Name] || ref.Key != e.Name || !documentedSecrets(t)[ref.Name] {
				t.Errorf("%s container %s: env %s from Secret %s key %s: only %v, from a Secret docs/deploy.md tells how to create, under their own names",
					w, c.Name, e.Name, ref.Name, ref.Key, slices.Sorted(maps.Keys(awsCredentialEnv)))
			}
		}
		if len(c.EnvFrom) > 0 {
			t.Errorf("%s container %s: envFrom", w, c.Name)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 && !spec.HostNetwork {
				t.Errorf("%s container %s: hostPort %d", w, c.Name, p.HostPort)
			}
		}
	}
}

// checkProxy: the registry and admin ports, the probes, and the mounted
// config, loaded by the real config loader with the container's env.
func checkProxy(t *testing.T, r rendered, w workload) {
	c := w.pod.Spec.Containers[0]
	if len(w.pod.Spec.Containers) != 1 {
		t.Fatalf("%s: want one container", w)
	}
	if want := []string{"serve", "--config", configPath}; !slices.Equal(c.Args, want) || len(c.Command) > 0 {
		t.Errorf("%s: command %q args %q, want the image's entrypoint with %q", w, c.Command, c.Args, want)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["registry"] != 5000 || ports["admin"] != 5001 {
		t.Errorf("%s: ports %v, want registry 5000 and admin 5001", w, ports)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := "/healthz"
		if name == "readiness" {
			want = "/readyz"
		}
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", w, name)
			continue
		}
		if p.HTTPGet.Path != want || containerPort(t, c, p.HTTPGet.Port) != 5001 || p.HTTPGet.Host != "" {
			t.Errorf("%s: %s probe %s on port %s, want %s on the admin port 5001", w, name, p.HTTPGet.Path, p.HTTPGet.Port.String(), want)
		}
	}

	// The config file as the container sees it.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	cfgMount, ok := mounts[configDir]
	if !ok || !cfgMount.ReadOnly {
		t.Fatalf("%s: want a read-only mount at %s, mounts %v", w, configDir, c.VolumeMounts)
	}
	data := configFile(t, r, w, cfgMount.Name)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"HOST_IP": "10.11.12.13"}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(e.Value), func(k string) string { return env[k] })
		}
		if strings.HasPrefix(e.Name, config.EnvPrefix+"_") {
			t.Setenv(e.Name, env[e.Name])
		}
	}
	cfg, err := config.Load(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatalf("%s: the mounted config does not load: %v", w, err)
	}
	_, lport, err := net.SplitHostPort(cfg.Listen.Addr)
	if err != nil || lport != "5000" {
		t.Errorf("%s: listen.addr %q, want port 5000", w, cfg.Listen.Addr)
	}
	_, aport, err := net.SplitHostPort(cfg.Admin.Addr)
	if err != nil || aport != "5001" {
		t.Errorf("%s: admin.addr %q, want port 5001", w, cfg.Admin.Addr)
	}
	if cfg.Listen.TLSEnabled() && !projects(w, cfgMount.Name, cfg.Listen.TLSCertFile, cfg.Listen.TLSKeyFile) {
		t.Errorf("%s: TLS is on but %s and %s are not mounted", w, cfg.Listen.TLSCertFile, cfg.Listen.TLSKeyFile)
	}
	// The cache on a volume of the Pod, or in a bucket with the fills
	// spooled on an emptyDir.
	var cache corev1.VolumeMount
	switch cfg.Storage.Driver {
	case "filesystem":
		root, _ := cfg.Storage.Parameters["rootdirectory"].(string)
		cache, ok = mounts[root]
		if !ok || cache.ReadOnly {
			t.Errorf("%s: storage rootdirectory %q is not a writable mount", w, root)
		} else {
			for _, v := range w.pod.Spec.Volumes {
				if v.Name == cache.Name && v.EmptyDir == nil && v.PersistentVolumeClaim == nil && v.Ephemeral == nil {
					t.Errorf("%s: cache volume %s is neither emptyDir nor a claim", w, v.Name)
				}
			}
		}
		for _, v := range w.pod.Spec.Volumes {
			if v.Name == cache.Name && v.EmptyDir != nil && v.EmptyDir.SizeLimit != nil {
				limit := v.EmptyDir.SizeLimit.Value()
				if m := cfg.Storage.MaxSizeBytes; m <= 0 || m > limit*85/100 {
					t.Errorf("%s: storage.maxSizeBytes %d must be set and leave 15%% of the cache volume's sizeLimit %d free", w, m, limit)
				}
			}
		}
	case "s3":
		spool, ok := mounts[cfg.Storage.SpoolDir]
		if !ok || spool.ReadOnly || !slices.ContainsFunc(w.pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == spool.Name && v.EmptyDir != nil }) {
			t.Errorf("%s: storage.spoolDir %q is not a writable emptyDir mount", w, cfg.Storage.SpoolDir)
		}
		if len(r.ofKind("PersistentVolumeClaim")) > 0 {
			t.Errorf("%s: a PersistentVolumeClaim beside a cache in a bucket", w)
		}
	default:
		t.Errorf("%s: storage.driver %q", w, cfg.Storage.Driver)
	}
	if _, ok := mounts["/tmp"]; !ok {
		t.Errorf("%s: no writable /tmp under the read-only root filesystem", w)
	}
	grace := w.pod.Spec.TerminationGracePeriodSeconds
	drain := cfg.Listen.DrainTimeout
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		drain += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if grace == nil || time.Duration(*grace)*time.Second <= drain {
		t.Errorf("%s: terminationGracePeriodSeconds must exceed drain %v (listen.drainTimeout plus preStop)", w, drain)
	}

	switch w.kind {
	case "Deployment":
		if host, _, _ := net.SplitHostPort(cfg.Listen.Addr); host != "" {
			t.Errorf("%s: listen.addr %q must listen on all Pod addresses", w, cfg.Listen.Addr)
		}
		d := typed[appsv1.Deployment](t, r.find("Deployment", w.name))
		if r.find("PodDisruptionBudget", w.name) == nil {
			t.Errorf("%s: no PodDisruptionBudget", w)
		}
		if cfg.Storage.Driver == "s3" {
			// Replicas on one bucket: no claim to hand over, so a new Pod
			// is ready before an old one stops.
			if s := d.Spec.Strategy; s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
				s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.IntValue() != 0 {
				t.Errorf("%s: strategy %+v, want RollingUpdate with maxUnavailable 0", w, s)
			}
			break
		}
		// One replica on a claim: replicas with caches of their own
		// would pin differently and split pin/sync/import.
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
			t.Errorf("%s: want 1 replica", w)
		}
		claim := ""
		for _, v := range w.pod.Spec.Volumes {
			if v.Name == cache.Name && v.PersistentVolumeClaim != nil {
				claim = v.PersistentVolumeClaim.ClaimName
			}
		}
		if pvc := r.find("PersistentVolumeClaim", claim); pvc == nil {
			t.Errorf("%s: the cache is not on a PersistentVolumeClaim of this build", w)
		} else {
			size := typed[corev1.PersistentVolumeClaim](t, pvc).Spec.Resources.Requests.Storage().Value()
			if m := cfg.Storage.MaxSizeBytes; m <= 0 || m > size*85/100 {
				t.Errorf("%s: storage.maxSizeBytes %d must be set and leave 15%% of the claim's %d free", w, m, size)
			}
		}
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("%s: a ReadWriteOnce cache needs strategy Recreate", w)
		}
	case "DaemonSet":
		if !w.pod.Spec.HostNetwork || w.pod.Spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			t.Errorf("%s: want hostNetwork with dnsPolicy ClusterFirstWithHostNet", w)
		}
		if cfg.Listen.Addr != "127.0.0.1:5000" {
			t.Errorf("%s: listen.addr %q, want 127.0.0.1:5000 (node loopback only)", w, cfg.Listen.Addr)
		}
		if cfg.Admin.Addr != env["HOST_IP"]+":5001" {
			t.Errorf("%s: admin.addr %q, want the node address where the kubelet probes", w, cfg.Admin.Addr)
		}
		ns := r.find("Namespace", namespace)
		if ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "privileged" {
			t.Errorf("%s: hostNetwork needs the namespace's Pod Security level privileged", w)
		}
		// Nothing in front of or around the per-node proxy but the headless
		// metrics Service: a Service cannot reach a listener on 127.0.0.1.
		for _, kind := range []string{"Service", "PodDisruptionBudget", "NetworkPolicy"} {
			for _, o := range r.ofKind(kind) {
				sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector")
				switch kind {
				case "PodDisruptionBudget":
					sel, _, _ = unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
				case "NetworkPolicy":
					sel, _, _ = unstructured.NestedStringMap(o.Object, "spec", "podSelector", "matchLabels")
				}
				if !selects(sel, w.pod.Labels) || (kind == "Service" && o.GetLabels()[componentKey] == "metrics") {
					continue
				}
				t.Errorf("%s: unexpected %s %s for a hostNetwork DaemonSet", w, kind, o.GetName())
			}
		}
	}
}

// projects reports whether the projected volume puts a Secret's keys at
// every one of paths (under configDir, where the volume is mounted).
func projects(w workload, volume string, paths ...string) bool {
	found := map[string]bool{}
	for _, v := range w.pod.Spec.Volumes {
		if v.Name != volume || v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.Secret == nil {
				continue
			}
			for _, item := range s.Secret.Items {
				found[configDir+"/"+item.Path] = true
			}
		}
	}
	for _, p := range paths {
		if !found[p] {
			return false
		}
	}
	return true
}

// configFile returns config.yaml from the volume, a ConfigMap or a
// projected volume with a ConfigMap source.
func configFile(t *testing.T, r rendered, w workload, volume string) string {
	t.Helper()
	for _, v := range w.pod.Spec.Volumes {
		if v.Name != volume {
			continue
		}
		var cms []corev1.ConfigMapProjection
		if v.ConfigMap != nil {
			cms = append(cms, corev1.ConfigMapProjection{LocalObjectReference: v.ConfigMap.LocalObjectReference, Items: v.ConfigMap.Items})
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil {
					cms = append(cms, *s.ConfigMap)
				}
			}
		}
		for _, cm := range cms {
			o := r.find("ConfigMap", cm.Name)
			if o == nil {
				t.Fatalf("%s: ConfigMap %s not in the output", w, cm.Name)
			}
			data, _, _ := unstructured.NestedStringMap(o.Object, "data")
			for key, val := range data {
				path := key
				for _, it := range cm.Items {
					if it.Key == key {
						path = it.Path
					}
				}
				if len(cm.Items) > 0 && path == key && !slices.ContainsFunc(cm.Items, func(it corev1.KeyToPath) bool { return it.Key == key }) {
					continue
				}
				if path == "config.yaml" {
					return val
				}
			}
		}
	}
	t.Fatalf("%s: volume %s provides no config.yaml", w, volume)
	return ""
}

// checkServices: every Service selects Pods that have the target port.
func checkServices(t *testing.T, r rendered, ws []workload) {
	for _, o := range r.ofKind("Service") {
		svc := typed[corev1.Service](t, o)
		var backends []workload
		for _, w := range ws {
			if selects(svc.Spec.Selector, w.pod.Labels) {
				backends = append(backends, w)
			}
		}
		if len(backends) != 1 {
			t.Errorf("Service %s selects %v, want exactly one workload", svc.Name, backends)
			continue
		}
		w := backends[0]
		for _, p := range svc.Spec.Ports {
			if p.Protocol != corev1.ProtocolTCP {
				t.Errorf("Service %s port %s: protocol %q", svc.Name, p.Name, p.Protocol)
			}
			found := false
			for _, c := range w.pod.Spec.Containers {
				for _, cp := range c.Ports {
					if (p.TargetPort.Type == intstr.String && cp.Name == p.TargetPort.StrVal) ||
						(p.TargetPort.Type == intstr.Int && cp.ContainerPort == p.TargetPort.IntVal) {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("Service %s port %s: target %s is no container port of %s", svc.Name, p.Name, p.TargetPort.String(), w)
			}
		}
	}
	if len(r.component(t, "proxy")) == 1 && r.component(t, "proxy")[0].kind == "Deployment" {
		svc := r.find("Service", "pullbroker")
		if svc == nil {
			t.Fatal("no Service pullbroker")
		}
		s := typed[corev1.Service](t, svc)
		if s.Spec.Type != corev1.ServiceTypeClusterIP || len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != 5000 {
			t.Errorf("Service pullbroker: %+v, want ClusterIP on 5000", s.Spec)
		}
		np := r.find("Service", "pullbroker-node")
		if np == nil {
			t.Fatal("no NodePort Service pullbroker-node")
		}
		n := typed[corev1.Service](t, np)
		if n.Spec.Type != corev1.ServiceTypeNodePort || len(n.Spec.Ports) != 1 || n.Spec.Ports[0].NodePort != 30500 ||
			n.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
			t.Errorf("Service pullbroker-node: %+v, want NodePort 30500 with externalTrafficPolicy Cluster", n.Spec)
		}
	}
}

func checkServiceMonitor(t *testing.T, r rendered) {
	sm := r.find("ServiceMonitor", "pullbroker")
	if sm == nil {
		t.Fatal("no ServiceMonitor")
	}
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v", eps)
	}
	ep := eps[0].(map[string]any)
	var svc *corev1.Service
	for _, o := range r.ofKind("Service") {
		if selects(sel, o.GetLabels()) {
			if svc != nil {
				t.Errorf("ServiceMonitor selects more than one Service")
			}
			svc = typed[corev1.Service](t, o)
		}
	}
	if svc == nil {
		t.Fatal("ServiceMonitor selects no Service")
	}
	if !selects(svc.Spec.Selector, onlyOne(t, "proxy", r.component(t, "proxy")).pod.Labels) {
		t.Errorf("metrics Service %s does not select the proxy", svc.Name)
	}
	ok := false
	for _, p := range svc.Spec.Ports {
		if p.Name == ep["port"] && p.TargetPort.IntValue() == 5001 {
			ok = true
		}
	}
	if !ok || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v does not scrape /metrics on the admin port 5001", ep)
	}
}

// ruleAllows reports whether an RBAC rule (as unstructured) matches.
type rule struct {
	APIGroups     []string `json:"apiGroups"`
	Resources     []string `json:"resources"`
	ResourceNames []string `json:"resourceNames"`
	Verbs         []string `json:"verbs"`
	URLs          []string `json:"nonResourceURLs"`
}

func rulesOf(t *testing.T, o *unstructured.Unstructured) []rule {
	t.Helper()
	raw, _, _ := unstructured.NestedSlice(o.Object, "rules")
	b, err := sigsyaml.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	var rs []rule
	if err := sigsyaml.UnmarshalStrict(b, &rs); err != nil {
		t.Fatalf("%s %s rules: %v", o.GetKind(), o.GetName(), err)
	}
	return rs
}

// checkRBAC: least privilege. The proxy may read Secrets in its own
// namespace only; the webhook may get and patch its own webhook
// configuration only; no wildcards anywhere; bindings point at objects that
// exist.
func checkRBAC(t *testing.T, r rendered, ws []workload) {
	mwcNames := map[string]bool{}
	for _, o := range r.ofKind("MutatingWebhookConfiguration") {
		mwcNames[o.GetName()] = true
	}
	for _, o := range append(r.ofKind("Role"), r.ofKind("ClusterRole")...) {
		if agg, _, _ := unstructured.NestedMap(o.Object, "aggregationRule"); agg != nil {
			t.Errorf("%s %s: aggregationRule", o.GetKind(), o.GetName())
		}
		for _, ru := range rulesOf(t, o) {
			for _, list := range [][]string{ru.APIGroups, ru.Resources, ru.ResourceNames, ru.Verbs, ru.URLs} {
				if slices.Contains(list, "*") {
					t.Errorf("%s %s: wildcard in %+v", o.GetKind(), o.GetName(), ru)
				}
			}
			if len(ru.URLs) > 0 {
				t.Errorf("%s %s: nonResourceURLs %v", o.GetKind(), o.GetName(), ru.URLs)
			}
			switch {
			case o.GetKind() == "Role" && slices.Equal(ru.APIGroups, []string{""}) && slices.Equal(ru.Resources, []string{"secrets"}):
				for _, v := range ru.Verbs {
					if v != "get" && v != "list" && v != "watch" {
						t.Errorf("Role %s: verb %q on secrets; the proxy only reads them", o.GetName(), v)
					}
				}
			// Leader election: client-go creates the Lease, then gets and
			// updates it by name.
			case o.GetKind() == "Role" && slices.Equal(ru.APIGroups, []string{"coordination.k8s.io"}) && slices.Equal(ru.Resources, []string{"leases"}):
				if !slices.Equal(ru.Verbs, []string{"create"}) &&
					!(slices.Equal(ru.Verbs, []string{"get", "update"}) && slices.Equal(ru.ResourceNames, []string{"pullbroker"})) {
					t.Errorf("Role %s: %+v, want create, and get and update of the Lease pullbroker only", o.GetName(), ru)
				}
			// Peers and running images: informers, which list and watch.
			case o.GetKind() == "Role" && slices.Equal(ru.APIGroups, []string{"discovery.k8s.io"}) && slices.Equal(ru.Resources, []string{"endpointslices"}),
				o.GetKind() == "ClusterRole" && slices.Equal(ru.APIGroups, []string{""}) && slices.Equal(ru.Resources, []string{"pods"}):
				if !slices.Equal(ru.Verbs, []string{"list", "watch"}) || len(ru.ResourceNames) > 0 {
					t.Errorf("%s %s: %+v, want list and watch only", o.GetKind(), o.GetName(), ru)
				}
			case o.GetKind() == "ClusterRole" && slices.Equal(ru.APIGroups, []string{"admissionregistration.k8s.io"}) &&
				slices.Equal(ru.Resources, []string{"mutatingwebhookconfigurations"}):
				if len(ru.ResourceNames) == 0 {
					t.Errorf("ClusterRole %s: webhook configurations without resourceNames", o.GetName())
				}
				for _, n := range ru.ResourceNames {
					if !mwcNames[n] {
						t.Errorf("ClusterRole %s: resourceName %q is not a rendered webhook configuration", o.GetName(), n)
					}
				}
				// The webhook reads and updates caBundle (rewrite/webhook/cabundle.go).
				if !slices.Equal(ru.Verbs, []string{"get", "update"}) {
					t.Errorf("ClusterRole %s: verbs %v on webhook configurations, want get and update only", o.GetName(), ru.Verbs)
				}
			default:
				t.Errorf("%s %s: unexpected rule %+v", o.GetKind(), o.GetName(), ru)
			}
		}
	}

	usedSAs := map[string]string{}
	for _, w := range ws {
		usedSAs[w.pod.Spec.ServiceAccountName] = w.pod.Labels[componentKey]
	}
	for _, o := range append(r.ofKind("RoleBinding"), r.ofKind("ClusterRoleBinding")...) {
		refKind, _, _ := unstructured.NestedString(o.Object, "roleRef", "kind")
		refName, _, _ := unstructured.NestedString(o.Object, "roleRef", "name")
		if r.find(refKind, refName) == nil {
			t.Errorf("%s %s: roleRef %s %s not in the output", o.GetKind(), o.GetName(), refKind, refName)
		}
		if o.GetKind() == "ClusterRoleBinding" && refKind != "ClusterRole" {
			t.Errorf("ClusterRoleBinding %s binds a %s", o.GetName(), refKind)
		}
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		if len(subjects) == 0 {
			t.Errorf("%s %s: no subjects", o.GetKind(), o.GetName())
		}
		for _, s := range subjects {
			s := s.(map[string]any)
			if s["kind"] != "ServiceAccount" || s["namespace"] != namespace || r.find("ServiceAccount", s["name"].(string)) == nil {
				t.Errorf("%s %s: subject %v is not a ServiceAccount of this output", o.GetKind(), o.GetName(), s)
				continue
			}
			comp, used := usedSAs[s["name"].(string)]
			if !used {
				t.Errorf("%s %s: ServiceAccount %v runs no workload", o.GetKind(), o.GetName(), s["name"])
			}
			// Only the webhook may touch webhook configurations; every
			// other rule is the proxy's.
			wantComp := "proxy"
			if role := r.find(refKind, refName); role != nil && slices.ContainsFunc(rulesOf(t, role), func(ru rule) bool {
				return slices.Contains(ru.APIGroups, "admissionregistration.k8s.io")
			}) {
				wantComp = "webhook"
			}
			if comp != wantComp {
				t.Errorf("%s %s grants %s %s to the %s workload, want %s", o.GetKind(), o.GetName(), refKind, refName, comp, wantComp)
			}
		}
	}
}

// npPeer is one entry of a NetworkPolicy rule's from or to.
type npPeer struct {
	PodSelector       *selector `json:"podSelector"`
	NamespaceSelector *selector `json:"namespaceSelector"`
	IPBlock           *struct {
		CIDR string `json:"cidr"`
	} `json:"ipBlock"`
}

// onlyPods reports whether the entries admit exactly the Pods labelled
// like w in the policy's own namespace: podSelectors that select w, and no
// namespaceSelector or ipBlock that would let others in.
func onlyPods(peers []npPeer, w workload) bool {
	if len(peers) == 0 {
		return false
	}
	for _, p := range peers {
		if p.NamespaceSelector != nil || p.IPBlock != nil || p.PodSelector == nil ||
			len(p.PodSelector.MatchExpressions) > 0 || !selects(p.PodSelector.MatchLabels, w.pod.Labels) {
			return false
		}
	}
	return true
}

func checkNetworkPolicies(t *testing.T, r rendered, ws []workload) {
	type portSet map[string]bool
	for _, o := range r.ofKind("NetworkPolicy") {
		raw, _ := sigsyaml.Marshal(o.Object)
		var np struct {
			Spec struct {
				PodSelector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"podSelector"`
				PolicyTypes []string `json:"policyTypes"`
				Ingress     []struct {
					Ports []struct {
						Protocol string `json:"protocol"`
						Port     int    `json:"port"`
					} `json:"ports"`
					From []npPeer `json:"from"`
				} `json:"ingress"`
				Egress []struct {
					Ports []struct {
						Protocol string `json:"protocol"`
						Port     int    `json:"port"`
					} `json:"ports"`
					To []npPeer `json:"to"`
				} `json:"egress"`
			} `json:"spec"`
		}
		if err := sigsyaml.Unmarshal(raw, &np); err != nil {
			t.Fatal(err)
		}
		var target *workload
		for i, w := range ws {
			if selects(np.Spec.PodSelector.MatchLabels, w.pod.Labels) {
				target = &ws[i]
			}
		}
		if target == nil {
			t.Errorf("NetworkPolicy %s selects no workload", o.GetName())
			continue
		}
		if target.pod.Spec.HostNetwork {
			t.Errorf("NetworkPolicy %s selects hostNetwork Pods, which it does not govern", o.GetName())
		}
		if !slices.Equal(np.Spec.PolicyTypes, []string{"Ingress", "Egress"}) {
			t.Errorf("NetworkPolicy %s: policyTypes %v", o.GetName(), np.Spec.PolicyTypes)
		}
		// The replicas' peer port: from and to the replicas only.
		var peerPort int32
		for _, c := range target.pod.Spec.Containers {
			for _, p := range c.Ports {
				if p.Name == "peer" {
					peerPort = p.ContainerPort
				}
			}
		}
		in, out := portSet{}, portSet{}
		for _, i := range np.Spec.Ingress {
			if len(i.Ports) == 0 {
				t.Errorf("NetworkPolicy %s: an ingress rule without ports opens every port", o.GetName())
			}
			for _, p := range i.Ports {
				in[p.Protocol+"/"+strconv.Itoa(p.Port)] = true
				if peerPort != 0 && p.Port == int(peerPort) && !onlyPods(i.From, *target) {
					t.Errorf("NetworkPolicy %s: the peer port %d is open to %+v, want the %s Pods only", o.GetName(), peerPort, i.From, target)
				}
			}
		}
		peerOut := false
		for _, e := range np.Spec.Egress {
			for _, p := range e.Ports {
				out[p.Protocol+"/"+strconv.Itoa(p.Port)] = true
				if peerPort != 0 && p.Port == int(peerPort) {
					peerOut = onlyPods(e.To, *target)
				}
			}
		}
		if peerPort != 0 && !peerOut {
			t.Errorf("NetworkPolicy %s: no egress to the peer port %d of the %s Pods only", o.GetName(), peerPort, target)
		}
		wantIn := []string{"TCP/5000", "TCP/5001"}
		if peerPort != 0 {
			wantIn = append(wantIn, "TCP/"+strconv.Itoa(int(peerPort)))
		}
		wantOut := []string{"UDP/53", "TCP/53", "TCP/443", "TCP/80", "TCP/6443"}
		if target.pod.Labels[componentKey] == "webhook" {
			wantIn = []string{"TCP/9443", "TCP/9090"}
			wantOut = []string{"UDP/53", "TCP/53", "TCP/443", "TCP/6443"}
		}
		if len(in) != len(wantIn) {
			t.Errorf("NetworkPolicy %s: ingress ports %v, want %v", o.GetName(), in, wantIn)
		}
		for _, p := range wantIn {
			if !in[p] {
				t.Errorf("NetworkPolicy %s: ingress lacks %s", o.GetName(), p)
			}
		}
		for _, p := range wantOut {
			if !out[p] {
				t.Errorf("NetworkPolicy %s: egress lacks %s", o.GetName(), p)
			}
		}
	}
	for _, w := range ws {
		if w.pod.Spec.HostNetwork {
			continue
		}
		n := 0
		for _, o := range r.ofKind("NetworkPolicy") {
			sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "podSelector", "matchLabels")
			if selects(sel, w.pod.Labels) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s is selected by %d NetworkPolicies, want 1", w, n)
		}
	}
}

func TestWebhookOverlay(t *testing.T) {
	for _, dir := range []string{"overlays/webhook", "examples/webhook-cert-manager", "examples/daemonset-webhook", "examples/ha-webhook"} {
		t.Run(dir, func(t *testing.T) { checkWebhook(t, render(t, dir)) })
	}
}

func checkWebhook(t *testing.T, r rendered) {
	mwc := r.find("MutatingWebhookConfiguration", webhookName)
	if mwc == nil {
		t.Fatal("no MutatingWebhookConfiguration pullbroker")
	}
	if n := len(r.ofKind("MutatingWebhookConfiguration")) + len(r.ofKind("ValidatingWebhookConfiguration")); n != 1 {
		t.Errorf("%d webhook configurations, want 1", n)
	}
	// Typed through the scheme, so the admissionregistration types apply.
	obj, err := scheme.Scheme.New(mwc.GroupVersionKind())
	if err != nil {
		t.Fatal(err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(mwc.Object, obj, true); err != nil {
		t.Fatal(err)
	}
	raw, _ := sigsyaml.Marshal(mwc.Object)
	var m struct {
		Webhooks []struct {
			Name                    string   `json:"name"`
			AdmissionReviewVersions []string `json:"admissionReviewVersions"`
			SideEffects             string   `json:"sideEffects"`
			FailurePolicy           string   `json:"failurePolicy"`
			ReinvocationPolicy      string   `json:"reinvocationPolicy"`
			TimeoutSeconds          int      `json:"timeoutSeconds"`
			ClientConfig            struct {
				CABundle string `json:"caBundle"`
				URL      string `json:"url"`
				Service  struct {
					Name, Namespace, Path string
					Port                  int32
				} `json:"service"`
			} `json:"clientConfig"`
			Rules []struct {
				APIGroups   []string `json:"apiGroups"`
				APIVersions []string `json:"apiVersions"`
				Operations  []string `json:"operations"`
				Resources   []string `json:"resources"`
			} `json:"rules"`
			NamespaceSelector selector `json:"namespaceSelector"`
			ObjectSelector    selector `json:"objectSelector"`
		} `json:"webhooks"`
	}
	if err := sigsyaml.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Webhooks) != 1 {
		t.Fatalf("want one webhook, got %d", len(m.Webhooks))
	}
	wh := m.Webhooks[0]
	if wh.FailurePolicy != "Ignore" || wh.ReinvocationPolicy != "IfNeeded" || wh.SideEffects != "None" ||
		!slices.Contains(wh.AdmissionReviewVersions, "v1") || wh.TimeoutSeconds < 1 || wh.TimeoutSeconds > 10 {
		t.Errorf("webhook %+v: want failurePolicy Ignore, reinvocationPolicy IfNeeded, sideEffects None, v1, a short timeout", wh)
	}
	if wh.ClientConfig.URL != "" || wh.ClientConfig.CABundle != "" {
		t.Errorf("clientConfig: want a Service reference and no static caBundle, got %+v", wh.ClientConfig)
	}
	cc := wh.ClientConfig.Service
	if cc.Namespace != namespace || cc.Path != "/mutate" {
		t.Errorf("clientConfig.service %+v, want namespace %s path /mutate", cc, namespace)
	}
	svcObj := r.find("Service", cc.Name)
	if svcObj == nil {
		t.Fatalf("webhook Service %s not in the output", cc.Name)
	}
	svc := typed[corev1.Service](t, svcObj)
	hook := onlyOne(t, "webhook", r.component(t, "webhook"))
	if !selects(svc.Spec.Selector, hook.pod.Labels) {
		t.Errorf("Service %s does not select the webhook Pods", svc.Name)
	}
	c := hook.pod.Spec.Containers[0]
	found := false
	for _, p := range svc.Spec.Ports {
		if p.Port == cc.Port || (cc.Port == 0 && p.Port == 443) {
			found = containerPort(t, c, p.TargetPort) == 9443
		}
	}
	if !found {
		t.Errorf("webhook Service %s port %d does not reach the webhook's TLS port 9443", svc.Name, cc.Port)
	}
	if len(c.Args) == 0 || c.Args[0] != "webhook" || len(c.Command) > 0 {
		t.Errorf("webhook container runs %q %q, want the image's entrypoint with webhook", c.Command, c.Args)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" ||
		p.HTTPGet.Scheme != corev1.URISchemeHTTPS || containerPort(t, c, p.HTTPGet.Port) != 9443 {
		t.Errorf("webhook readiness probe %+v, want HTTPS /healthz on 9443", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || containerPort(t, c, p.HTTPGet.Port) != 9090 {
		t.Errorf("webhook liveness probe %+v, want /healthz on the metrics port 9090", p)
	}
	if hook.pod.Spec.ServiceAccountName == onlyOne(t, "proxy", r.component(t, "proxy")).pod.Spec.ServiceAccountName {
		t.Errorf("webhook and proxy share a ServiceAccount: the webhook must not read credential Secrets")
	}
	// The flags that must agree with the other objects.
	flags := map[string]string{}
	for _, a := range c.Args[1:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			flags[k] = v
		}
	}
	if flags["--tls-cert-file"] == "" {
		// Self-signed: the webhook names its certificate after the Service
		// and writes the CA into the configuration its ClusterRole covers.
		if flags["--webhook-config"] != mwc.GetName() || flags["--service-name"] != cc.Name {
			t.Errorf("webhook flags %v: --webhook-config and --service-name must be %s and %s", flags, mwc.GetName(), cc.Name)
		}
		if r.find("ClusterRoleBinding", "pullbroker-webhook") == nil {
			t.Errorf("self-signed webhook without the ClusterRoleBinding that lets it write the caBundle")
		}
	} else {
		// From files: both are projected from the Secret a Certificate
		// writes, and cert-manager fills the caBundle.
		files := map[string]bool{}
		for _, m := range c.VolumeMounts {
			for _, v := range hook.pod.Spec.Volumes {
				if v.Name != m.Name || v.Projected == nil {
					continue
				}
				for _, src := range v.Projected.Sources {
					if src.Secret != nil && r.certificateFor(src.Secret.Name) {
						for _, it := range src.Secret.Items {
							files[filepath.Join(m.MountPath, it.Path)] = true
						}
					}
				}
			}
		}
		if !files[flags["--tls-cert-file"]] || !files[flags["--tls-key-file"]] {
			t.Errorf("webhook --tls-cert-file %q / --tls-key-file %q are not projected from a Certificate's Secret (%v)",
				flags["--tls-cert-file"], flags["--tls-key-file"], files)
		}
		if mwc.GetAnnotations()["cert-manager.io/inject-ca-from"] != namespace+"/"+r.ofKind("Certificate")[0].GetName() {
			t.Errorf("webhook configuration lacks cert-manager.io/inject-ca-from for the Certificate")
		}
	}
	// Rewritten images must name an address every node reaches: the node
	// port on the node's own loopback, or the per-node proxy's listener.
	proxy := onlyOne(t, "proxy", r.component(t, "proxy"))
	switch proxy.kind {
	case "Deployment":
		if np := r.find("Service", "pullbroker-node"); np == nil {
			t.Errorf("no NodePort Service for --proxy-host")
		} else if n := typed[corev1.Service](t, np); flags["--proxy-host"] != fmt.Sprintf("127.0.0.1:%d", n.Spec.Ports[0].NodePort) {
			t.Errorf("webhook --proxy-host %q, want 127.0.0.1:%d (the node port)", flags["--proxy-host"], n.Spec.Ports[0].NodePort)
		}
	case "DaemonSet":
		listen := ""
		for _, e := range proxy.pod.Spec.Containers[0].Env {
			if e.Name == "PULLBROKER_LISTEN_ADDR" {
				listen = e.Value
			}
		}
		if flags["--proxy-host"] != listen {
			t.Errorf("webhook --proxy-host %q, want the per-node proxy's %q", flags["--proxy-host"], listen)
		}
	}
	nsFromPod := false
	for _, e := range c.Env {
		if e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
			nsFromPod = true
		}
	}
	if !nsFromPod && flags["--namespace"] != namespace {
		t.Errorf("webhook: the proxy's namespace comes neither from POD_NAMESPACE nor --namespace")
	}

	podCreate := false
	for _, ru := range wh.Rules {
		if slices.Equal(ru.APIGroups, []string{""}) && slices.Equal(ru.Resources, []string{"pods"}) && slices.Equal(ru.Operations, []string{"CREATE"}) {
			podCreate = true
		}
		for _, res := range ru.Resources {
			if res != "pods" && res != "pods/ephemeralcontainers" {
				t.Errorf("webhook rule on %q", res)
			}
		}
		if slices.Contains(ru.Operations, "*") || slices.Contains(ru.Operations, "DELETE") {
			t.Errorf("webhook rule operations %v", ru.Operations)
		}
	}
	if !podCreate {
		t.Errorf("no rule for Pod CREATE: %+v", wh.Rules)
	}
	if !wh.NamespaceSelector.excludes("kubernetes.io/metadata.name", "kube-system") ||
		!wh.NamespaceSelector.excludes("kubernetes.io/metadata.name", namespace) {
		t.Errorf("namespaceSelector %+v must exclude kube-system and %s", wh.NamespaceSelector, namespace)
	}
	if !wh.ObjectSelector.excludes(optOutKey, optOutValue) {
		t.Errorf("objectSelector %+v must exclude Pods labelled %s=%s", wh.ObjectSelector, optOutKey, optOutValue)
	}
	if !wh.NamespaceSelector.excludes(optOutKey, optOutValue) {
		t.Errorf("namespaceSelector %+v must exclude namespaces labelled %s=%s", wh.NamespaceSelector, optOutKey, optOutValue)
	}
}

type selector struct {
	MatchLabels      map[string]string `json:"matchLabels"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values"`
	} `json:"matchExpressions"`
}

// excludes reports whether the selector rejects an object labelled key=value
// while accepting one without the label.
func (s selector) excludes(key, value string) bool {
	if len(s.MatchLabels) > 0 {
		return false
	}
	for _, e := range s.MatchExpressions {
		if e.Key == key && e.Operator == "NotIn" && slices.Contains(e.Values, value) {
			return true
		}
	}
	return false
}

// awsCredentialEnv are the variables of the AWS default credential chain
// that the s3 driver reads when storage.parameters has no accesskey.
var awsCredentialEnv = map[string]bool{"AWS_ACCESS_KEY_ID": true, "AWS_SECRET_ACCESS_KEY": true}

var createSecretCommand = regexp.MustCompile(`kubectl (?:-n \S+ )?create secret (?:generic|docker-registry|tls) ([a-z0-9.-]+)`)

// documentedSecrets are the Secrets docs/deploy.md gives a `kubectl create
// secret` command for: those a layout may require without making them.
func documentedSecrets(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range createSecretCommand.FindAllSubmatch(b, -1) {
		out[string(m[1])] = true
	}
	return out
}
