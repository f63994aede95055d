package rewrite

import "strings"

// Keys pullbroker reads and writes on Pods and Pod templates.
const (
	// OptOutKey, as a label or an annotation with value "false", keeps
	// pullbroker from rewriting the Pod. As a label it can also be used in
	// the webhook configuration's objectSelector and namespaceSelector, so
	// the API server does not even call the webhook.
	OptOutKey   = "pullbroker.io/rewrite"
	OptOutValue = "false"
	// OriginalImagesAnnotation records the images pullbroker replaced, as a
	// JSON object from container name to the image as it was written.
	// Container names are unique across all of a Pod's container lists.
	OriginalImagesAnnotation = "pullbroker.io/original-images"
	// MirrorPodAnnotation marks the API server's copy of a static Pod. The
	// kubelet runs the static Pod from its manifest file, so changing the
	// copy would change nothing but make it lie about what runs.
	MirrorPodAnnotation = "kubernetes.io/config.mirror"
)

// DefaultExcludedNamespaces are left alone unless told otherwise: the
// control plane and the cluster's own add-ons must start even when the proxy
// does not. The proxy's own namespace is added by the caller.
var DefaultExcludedNamespaces = []string{"kube-system"}

// PodFilter decides which Pods (and Pod templates) are not rewritten at all.
type PodFilter struct {
	// ExcludeNamespaces are never rewritten. The proxy's own namespace
	// belongs here: a proxy Pod pulled through the proxy cannot start when
	// no proxy runs.
	ExcludeNamespaces []string
}

// SkipReason returns why a Pod with this namespace, labels and annotations
// is left alone, or "" when it is rewritten. namespace may be empty (a
// manifest that does not say), which excludes nothing.
func (f PodFilter) SkipReason(namespace string, labels, annotations map[string]string) string {
	for _, ns := range f.ExcludeNamespaces {
		if namespace != "" && namespace == ns {
			return "namespace " + ns + " is excluded"
		}
	}
	if optedOut(labels[OptOutKey]) {
		return "label " + OptOutKey + "=" + OptOutValue
	}
	if optedOut(annotations[OptOutKey]) {
		return "annotation " + OptOutKey + "=" + OptOutValue
	}
	if _, ok := annotations[MirrorPodAnnotation]; ok {
		return "mirror Pod of a static Pod"
	}
	return ""
}

// optedOut accepts "false" in any case: the value is typed by hand in
// manifests, and "False" meaning "rewrite anyway" would surprise.
func optedOut(value string) bool {
	return strings.EqualFold(strings.TrimSpace(value), OptOutValue)
}
