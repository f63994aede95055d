package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/distribution/reference"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/rewrite"
)

const proxy = "pullbroker.example:5000"

func newTestHandler(t *testing.T, resolver rewrite.Resolver) (*Handler, *Metrics) {
	t.Helper()
	rw, err := rewrite.New(rewrite.Options{ProxyHost: proxy, Upstreams: config.PublicUpstreams(), Resolver: resolver})
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	return NewHandler(Options{
		Rewriter: rw,
		Filter:   rewrite.PodFilter{ExcludeNamespaces: []string{"kube-system", "pullbroker"}},
		Metrics:  m,
	}), m
}

// review is an AdmissionReview request as the API server sends it.
func review(t *testing.T, op, subResource, namespace string, pod, old any) []byte {
	t.Helper()
	req := map[string]any{
		"uid":         "3f1c0a58-0000-4000-8000-000000000001",
		"kind":        map[string]string{"group": "", "version": "v1", "kind": "Pod"},
		"resource":    map[string]string{"group": "", "version": "v1", "resource": "pods"},
		"subResource": subResource,
		"namespace":   namespace,
		"operation":   op,
		"userInfo":    map[string]any{"username": "tester"},
		"object":      pod,
	}
	if old != nil {
		req["oldObject"] = old
	}
	b, err := json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body to the handler and returns the decoded answer.
func post(t *testing.T, h http.Handler, body []byte) admissionv1.AdmissionReview {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathMutate, bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("answer does not decode: %v: %s", err, rec.Body)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("answer is not an AdmissionReview v1 response: %s", rec.Body)
	}
	if !out.Response.Allowed {
		t.Fatalf("the webhook refused a request: %s", rec.Body)
	}
	return out
}

// applied applies the answer's patch to the Pod, as the API server would.
func applied(t *testing.T, pod []byte, resp *admissionv1.AdmissionResponse) corev1.Pod {
	t.Helper()
	if len(resp.Patch) > 0 {
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
		}
		p, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("patch %s: %v", resp.Patch, err)
		}
		if pod, err = p.Apply(pod); err != nil {
			t.Fatalf("applying %s: %v", resp.Patch, err)
		}
	}
	var out corev1.Pod
	if err := json.Unmarshal(pod, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

const podJSON = `{
  "apiVersion": "v1", "kind": "Pod",
  "metadata": {"generateName": "web-", "namespace": "default", "labels": {"app": "web"}},
  "spec": {
    "initContainers": [{"name": "init", "image": "busybox:1.36"}],
    "containers": [
      {"name": "web", "image": "nginx:1.27"},
      {"name": "sidecar", "image": "` + proxy + `/ghcr.io/org/sidecar:v1"},
      {"name": "local", "image": "registry.internal.example/team/app:2"},
      {"name": "pinned", "image": "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
    ]
  }
}`

func TestCreateRewritesAllContainers(t *testing.T) {
	h, m := newTestHandler(t, nil)
	out := post(t, h, review(t, "CREATE", "", "default", json.RawMessage(podJSON), nil))
	if out.Response.UID != "3f1c0a58-0000-4000-8000-000000000001" {
		t.Errorf("UID %q not echoed", out.Response.UID)
	}
	pod := applied(t, []byte(podJSON), out.Response)

	want := map[string]string{
		"init":    proxy + "/docker.io/library/busybox:1.36",
		"web":     proxy + "/docker.io/library/nginx:1.27",
		"sidecar": proxy + "/ghcr.io/org/sidecar:v1",                                                                  // already there
		"local":   "registry.internal.example/team/app:2",                                                             // not an upstream
		"pinned":  proxy + "/ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", // digest kept
	}
	for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		if c.Image != want[c.Name] {
			t.Errorf("container %s: image %q, want %q", c.Name, c.Image, want[c.Name])
		}
	}
	originals, err := OriginalImages(pod.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	wantOriginals := map[string]string{
		"init": "busybox:1.36", "web": "nginx:1.27",
		"pinned": "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	}
	if len(originals) != len(wantOriginals) {
		t.Errorf("originals %v, want %v", originals, wantOriginals)
	}
	for k, v := range wantOriginals {
		if originals[k] != v {
			t.Errorf("original of %s = %q, want %q", k, originals[k], v)
		}
	}
	if pod.Labels["app"] != "web" {
		t.Error("the patch lost a label")
	}
	if got := counterValue(t, m.imagesRewritten); got != 3 {
		t.Errorf("images rewritten metric %v, want 3", got)
	}
	if got := counterValue(t, m.admissions.WithLabelValues(resultRewritten)); got != 1 {
		t.Errorf("rewritten admissions metric %v, want 1", got)
	}

	// Reinvocation (reinvocationPolicy IfNeeded) on the patched Pod: nothing
	// more to do.
	again, _ := json.Marshal(pod)
	if out := post(t, h, review(t, "CREATE", "", "default", json.RawMessage(again), nil)); len(out.Response.Patch) != 0 {
		t.Errorf("reinvocation patched again: %s", out.Response.Patch)
	}
}

// TestReinvocationKeepsFirstOriginals: another webhook added a container
// after pullbroker ran; the reinvocation rewrites it and adds its original
// without touching the ones recorded first.
func TestReinvocationKeepsFirstOriginals(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	pod := `{"metadata": {"name": "p", "annotations": {"pullbroker.io/original-images": "{\"web\":\"nginx:1.27\"}", "other": "x"}},
	  "spec": {"containers": [
	    {"name": "web", "image": "` + proxy + `/docker.io/library/nginx:1.27"},
	    {"name": "injected", "image": "quay.io/org/agent:3"}]}}`
	out := post(t, h, review(t, "CREATE", "", "default", json.RawMessage(pod), nil))
	got := applied(t, []byte(pod), out.Response)
	if img := got.Spec.Containers[1].Image; img != proxy+"/quay.io/org/agent:3" {
		t.Errorf("injected container image %q", img)
	}
	originals, _ := OriginalImages(got.Annotations)
	if originals["web"] != "nginx:1.27" || originals["injected"] != "quay.io/org/agent:3" || len(originals) != 2 {
		t.Errorf("originals %v", originals)
	}
	if got.Annotations["other"] != "x" {
		t.Error("another annotation was lost")
	}
}

func TestSkipRules(t *testing.T) {
	h, m := newTestHandler(t, nil)
	for name, tc := range map[string]struct{ namespace, meta string }{
		"kube-system":        {"kube-system", `{}`},
		"own namespace":      {"pullbroker", `{}`},
		"opt-out label":      {"default", `{"labels": {"pullbroker.io/rewrite": "false"}}`},
		"opt-out annotation": {"default", `{"annotations": {"pullbroker.io/rewrite": "false"}}`},
		"mirror pod":         {"default", `{"annotations": {"kubernetes.io/config.mirror": "0123"}}`},
	} {
		pod := `{"metadata": ` + tc.meta + `, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}`
		out := post(t, h, review(t, "CREATE", "", tc.namespace, json.RawMessage(pod), nil))
		if len(out.Response.Patch) != 0 {
			t.Errorf("%s: patched: %s", name, out.Response.Patch)
		}
	}
	if got := counterValue(t, m.admissions.WithLabelValues(resultSkipped)); got != 5 {
		t.Errorf("skipped admissions metric %v, want 5", got)
	}
}

// TestUndecodableIsAllowed: whatever the webhook cannot read, it lets
// through unchanged.
func TestUndecodableIsAllowed(t *testing.T) {
	h, m := newTestHandler(t, nil)
	for name, body := range map[string][]byte{
		"not JSON":            []byte("{not json"),
		"no request":          []byte(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}`),
		"pod of wrong shape":  review(t, "CREATE", "", "default", map[string]any{"spec": map[string]any{"containers": "nginx"}}, nil),
		"request wrong shape": []byte(`{"request": {"uid": "u-1", "object": 5, "operation": ["x"]}}`),
	} {
		out := post(t, h, body)
		if len(out.Response.Patch) != 0 {
			t.Errorf("%s: patched: %s", name, out.Response.Patch)
		}
		if name == "request wrong shape" && out.Response.UID != "u-1" {
			t.Errorf("%s: UID %q, want u-1 dug out of the body", name, out.Response.UID)
		}
	}
	if got := counterValue(t, m.admissions.WithLabelValues(resultUndecodable)); got != 4 {
		t.Errorf("undecodable admissions metric %v, want 4", got)
	}
}

func TestIgnoredRequests(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	pod := json.RawMessage(`{"spec": {"containers": [{"name": "c", "image": "nginx"}]}}`)
	// A plain Pod update: images of a running Pod are not this webhook's business.
	if out := post(t, h, review(t, "UPDATE", "", "default", pod, pod)); len(out.Response.Patch) != 0 {
		t.Errorf("UPDATE patched: %s", out.Response.Patch)
	}
	// Another resource, e.g. a misconfigured rule sending Deployments.
	body := bytes.Replace(review(t, "CREATE", "", "default", pod, nil), []byte(`"resource":"pods"`), []byte(`"resource":"deployments"`), 1)
	if out := post(t, h, body); len(out.Response.Patch) != 0 {
		t.Errorf("a Deployment was patched: %s", out.Response.Patch)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathMutate, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d, want 405", rec.Code)
	}
}

// TestEphemeralContainers: through the subresource only the ephemeral
// containers being added change; an existing one may not change at all, and
// an annotation change would be dropped, so none is sent.
func TestEphemeralContainers(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	old := `{"metadata": {"name": "p"}, "spec": {
	  "containers": [{"name": "web", "image": "nginx"}],
	  "ephemeralContainers": [{"name": "debug1", "image": "busybox"}]}}`
	pod := `{"metadata": {"name": "p"}, "spec": {
	  "containers": [{"name": "web", "image": "nginx"}],
	  "ephemeralContainers": [{"name": "debug1", "image": "busybox"}, {"name": "debug2", "image": "alpine:3.20"}]}}`
	out := post(t, h, review(t, "UPDATE", "ephemeralcontainers", "default", json.RawMessage(pod), json.RawMessage(old)))
	var ops []patchOp
	if err := json.Unmarshal(out.Response.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Path != "/spec/ephemeralContainers/1/image" || ops[0].Value != proxy+"/docker.io/library/alpine:3.20" {
		t.Errorf("patch %s, want only the new ephemeral container's image", out.Response.Patch)
	}
}

func TestResolveFailureWarns(t *testing.T) {
	failing := rewrite.ResolverFunc(func(context.Context, reference.NamedTagged) (digest.Digest, error) {
		return "", errors.New("proxy unreachable")
	})
	h, m := newTestHandler(t, failing)
	pod := `{"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}`
	out := post(t, h, review(t, "CREATE", "", "default", json.RawMessage(pod), nil))
	got := applied(t, []byte(pod), out.Response)
	if img := got.Spec.Containers[0].Image; img != proxy+"/docker.io/library/nginx:1.27" {
		t.Errorf("image %q, want the tag-only rewrite", img)
	}
	if len(out.Response.Warnings) != 1 || !strings.Contains(out.Response.Warnings[0], "proxy unreachable") {
		t.Errorf("warnings %q", out.Response.Warnings)
	}
	if got := counterValue(t, m.resolveFailures); got != 1 {
		t.Errorf("resolve failures metric %v, want 1", got)
	}
}

func TestResolvedDigestIsWritten(t *testing.T) {
	const sum = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	h, _ := newTestHandler(t, rewrite.ResolverFunc(func(context.Context, reference.NamedTagged) (digest.Digest, error) {
		return sum, nil
	}))
	pod := `{"metadata": {"annotations": {}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}`
	out := post(t, h, review(t, "CREATE", "", "default", json.RawMessage(pod), nil))
	got := applied(t, []byte(pod), out.Response)
	if img := got.Spec.Containers[0].Image; img != proxy+"/docker.io/library/nginx:1.27@"+sum {
		t.Errorf("image %q", img)
	}
	if o, _ := OriginalImages(got.Annotations); o["web"] != "nginx:1.27" {
		t.Errorf("originals %v", o)
	}
}

func TestHealthz(t *testing.T) {
	h, _ := newTestHandler(t, nil)
	rec := httptest.NewRecorder()
	NewServeMux(h).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathHealthz, nil))
	if rec.Code != http.StatusOK {
		t.Errorf("healthz: %d", rec.Code)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
