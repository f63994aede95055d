// Package webhook is the mutating admission webhook that rewrites the images
// of new Pods to the proxy: AdmissionReview v1 in, a JSON Patch out.
//
// It is built to be harmless when it misbehaves: a request it does not
// understand is allowed unchanged and logged, never refused, and it is meant
// to be registered with failurePolicy Ignore, so a Pod is still admitted,
// unchanged, when the webhook is down. It also works with reinvocationPolicy
// IfNeeded: images already on the proxy are left alone and the
// original-images annotation keeps the first original.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pullbroker/pullbroker/rewrite"
)

// Paths the webhook server answers.
const (
	PathMutate  = "/mutate"
	PathHealthz = "/healthz"
)

// DefaultResolveTimeout bounds tag resolution for one admission request. The
// API server's own webhook timeout is 10 s by default; a resolution that
// takes longer leaves the image with its tag only.
const DefaultResolveTimeout = 3 * time.Second

// maxReviewBytes bounds a request body. The API server limits objects to
// about 3 MiB; an AdmissionReview of an UPDATE carries two.
const maxReviewBytes = 8 << 20

// Options configure a Handler.
type Options struct {
	Rewriter *rewrite.Rewriter
	Filter   rewrite.PodFilter
	// ResolveTimeout bounds tag resolution per request; 0 means
	// DefaultResolveTimeout.
	ResolveTimeout time.Duration
	// Logger may be nil.
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
}

// Handler answers AdmissionReview requests.
type Handler struct {
	rewriter       *rewrite.Rewriter
	filter         rewrite.PodFilter
	resolveTimeout time.Duration
	log            *slog.Logger
	metrics        *Metrics
}

// NewHandler returns a Handler; Options.Rewriter is required.
func NewHandler(o Options) *Handler {
	h := &Handler{
		rewriter:       o.Rewriter,
		filter:         o.Filter,
		resolveTimeout: o.ResolveTimeout,
		log:            o.Logger,
		metrics:        o.Metrics,
	}
	if h.resolveTimeout <= 0 {
		h.resolveTimeout = DefaultResolveTimeout
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.metrics == nil {
		h.metrics = NewMetrics(nil)
	}
	return h
}

// NewServeMux serves the handler at PathMutate and a health check at
// PathHealthz.
func NewServeMux(h *Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(PathMutate, h)
	mux.HandleFunc(PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

// ServeHTTP decodes an AdmissionReview and answers it. Every answer it can
// address (it knows the request's UID) allows the request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err == nil && len(body) > maxReviewBytes {
		err = fmt.Errorf("body larger than %d bytes", maxReviewBytes)
	}
	var review admissionv1.AdmissionReview
	if err == nil {
		err = json.Unmarshal(body, &review)
	}
	if err == nil && review.Request == nil {
		err = errors.New("AdmissionReview without a request")
	}

	var resp *admissionv1.AdmissionResponse
	var result string
	if err != nil {
		h.log.Warn("admission request not understood; answering allowed without changes", "err", err, "remote", r.RemoteAddr)
		resp, result = &admissionv1.AdmissionResponse{UID: uidOf(body), Allowed: true}, resultUndecodable
	} else {
		resp, result = h.admit(r.Context(), review.Request)
	}
	h.metrics.observe(result, time.Since(start))

	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		h.log.Warn("writing the admission response", "err", err)
	}
}

// uidOf digs the request UID out of a body that did not decode as a whole,
// so that the answer can still be matched to its request.
func uidOf(body []byte) types.UID {
	var partial struct {
		Request struct {
			UID types.UID `json:"uid"`
		} `json:"request"`
	}
	_ = json.Unmarshal(body, &partial)
	return partial.Request.UID
}

// Results of an admission, the values of the metrics' result label.
const (
	resultRewritten   = "rewritten"   // at least one image changed
	resultUnchanged   = "unchanged"   // looked at, nothing to change
	resultSkipped     = "skipped"     // left alone by a skip rule
	resultIgnored     = "ignored"     // not a request this webhook handles
	resultUndecodable = "undecodable" // the review or the Pod did not decode
)

var podsResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}

func (h *Handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, string) {
	allow := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	log := h.log.With("uid", req.UID, "namespace", req.Namespace, "name", req.Name, "operation", req.Operation, "subResource", req.SubResource)

	// Which containers this request may change: all of them when a Pod is
	// created; only the ephemeral containers being added when they are
	// (the subresource ignores every other change, and an existing
	// ephemeral container may not be changed at all).
	var ephemeralOnly bool
	switch {
	case req.Resource != podsResource:
		log.Debug("not a Pod; allowed unchanged", "resource", req.Resource)
		return allow, resultIgnored
	case req.SubResource == "" && req.Operation == admissionv1.Create:
	case req.SubResource == "ephemeralcontainers" && req.Operation == admissionv1.Update:
		ephemeralOnly = true
	default:
		log.Debug("operation not handled; allowed unchanged")
		return allow, resultIgnored
	}

	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		log.Warn("Pod does not decode; allowed unchanged", "err", err)
		return allow, resultUndecodable
	}
	var existingEphemeral map[string]bool
	if ephemeralOnly {
		var old corev1.Pod
		if err := json.Unmarshal(req.OldObject.Raw, &old); err != nil {
			log.Warn("old Pod does not decode; allowed unchanged", "err", err)
			return allow, resultUndecodable
		}
		existingEphemeral = map[string]bool{}
		for _, c := range old.Spec.EphemeralContainers {
			existingEphemeral[c.Name] = true
		}
	}

	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	if reason := h.filter.SkipReason(namespace, pod.Labels, pod.Annotations); reason != "" {
		log.Debug("Pod skipped", "reason", reason)
		return allow, resultSkipped
	}

	ctx, cancel := context.WithTimeout(ctx, h.resolveTimeout)
	defer cancel()
	var patch []patchOp
	originals := map[string]string{}
	var warnings []string
	rewriteList := func(field string, containers []containerImage) {
		for i, c := range containers {
			if ephemeralOnly && existingEphemeral[c.name] {
				continue
			}
			res := h.rewriter.Rewrite(ctx, c.image)
			if res.ResolveErr != nil {
				h.metrics.resolveFailures.Inc()
				log.Warn("tag not pinned to a digest", "container", c.name, "image", c.image, "err", res.ResolveErr)
				warnings = append(warnings, fmt.Sprintf("pullbroker: %s not pinned to a digest: %v", c.image, res.ResolveErr))
			}
			if !res.Changed {
				continue
			}
			patch = append(patch, patchOp{Op: "replace", Path: "/spec/" + field + "/" + strconv.Itoa(i) + "/image", Value: res.Image})
			originals[c.name] = c.image
			h.metrics.imagesRewritten.Inc()
		}
	}
	if !ephemeralOnly {
		rewriteList("initContainers", containerFields(pod.Spec.InitContainers))
		rewriteList("containers", containerFields(pod.Spec.Containers))
	}
	rewriteList("ephemeralContainers", ephemeralFields(pod.Spec.EphemeralContainers))
	allow.Warnings = warnings
	if len(patch) == 0 {
		return allow, resultUnchanged
	}
	if !ephemeralOnly {
		// The subresource would drop an annotation change, so only a
		// create records the originals.
		patch = append(patch, annotationPatch(req.Object.Raw, pod.Annotations, originals, log))
	}
	raw, err := json.Marshal(patch)
	if err != nil { // cannot happen with strings only; allow rather than fail
		log.Error("encoding the patch", "err", err)
		return allow, resultUndecodable
	}
	log.Info("images rewritten", "images", originals)
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = raw, &pt
	return allow, resultRewritten
}

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// containerImage is what the webhook needs of a container, whichever list
// it is in.
type containerImage struct{ name, image string }

func containerFields(cs []corev1.Container) []containerImage {
	out := make([]containerImage, len(cs))
	for i, c := range cs {
		out[i] = containerImage{c.Name, c.Image}
	}
	return out
}

func ephemeralFields(cs []corev1.EphemeralContainer) []containerImage {
	out := make([]containerImage, len(cs))
	for i, c := range cs {
		out[i] = containerImage{c.Name, c.Image}
	}
	return out
}

// annotationPatch records the original images, keeping what an earlier
// invocation recorded: on reinvocation the images it rewrote are already on
// the proxy, and their first original is the one worth keeping.
func annotationPatch(rawPod []byte, annotations, originals map[string]string, log *slog.Logger) patchOp {
	merged, err := OriginalImages(annotations)
	if err != nil {
		log.Warn("replacing an original-images annotation that is not a JSON object", "err", err)
		merged = map[string]string{}
	}
	for name, image := range originals {
		if _, ok := merged[name]; !ok {
			merged[name] = image
		}
	}
	// encoding/json sorts map keys: the same Pod always gets the same text.
	encoded, _ := json.Marshal(merged)
	value := string(encoded)
	// A JSON Patch "add" needs the parent to exist.
	var has struct {
		Metadata *struct {
			Annotations json.RawMessage `json:"annotations"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(rawPod, &has) // it decoded as a Pod already
	entry := map[string]string{rewrite.OriginalImagesAnnotation: value}
	switch {
	case has.Metadata == nil:
		return patchOp{Op: "add", Path: "/metadata", Value: map[string]any{"annotations": entry}}
	case annotations == nil || string(has.Metadata.Annotations) == "null":
		return patchOp{Op: "add", Path: "/metadata/annotations", Value: entry}
	}
	// "add" replaces a member that exists.
	return patchOp{Op: "add", Path: "/metadata/annotations/" + escapePointer(rewrite.OriginalImagesAnnotation), Value: value}
}

// escapePointer escapes a JSON Pointer reference token (RFC 6901).
func escapePointer(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

// OriginalImages reads the annotation the webhook writes: container name to
// the image as it was written.
func OriginalImages(annotations map[string]string) (map[string]string, error) {
	m := map[string]string{}
	v, ok := annotations[rewrite.OriginalImagesAnnotation]
	if !ok {
		return m, nil
	}
	err := json.Unmarshal([]byte(v), &m)
	return m, err
}
