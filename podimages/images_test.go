package podimages

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/pullbroker/pullbroker/config"
)

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upstreams = append(cfg.Upstreams, config.Upstream{Name: "registry.example:5000", Endpoint: "https://registry.example:5000"})
	return cfg
}

func TestProxyImageReadsBothForms(t *testing.T) {
	cfg := testConfig(t)
	const d = "sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff"
	tests := []struct {
		ref  string
		want string // tags.Image.String(); "" when not served
	}{
		// The plain form, as a node with a mirror pulls it.
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27"},
		{"index.docker.io/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"ghcr.io/org/app:v1@" + d, "ghcr.io/org/app:v1@" + d},
		{"registry.example:5000/team/app@" + d, "registry.example:5000/team/app@" + d},
		// The webhook's image-prefix form, whatever the proxy's host.
		{"pullbroker.example:5000/docker.io/library/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"localhost:30500/docker.io/nginx:1.27", "docker.io/library/nginx:1.27"},
		{"pullbroker.example/ghcr.io/org/app@" + d, "ghcr.io/org/app@" + d},
		{"pullbroker.example/registry.example_5000/team/app:v2", "registry.example:5000/team/app:v2"},
		// Not served: a registry that is no upstream, in either form.
		{"example.invalid/org/app:v1", ""},
		{"pullbroker.example/example.invalid/org/app:v1", ""},
		{"pullbroker.example/org/app:v1", ""},
		{"Not A Reference", ""},
	}
	for _, tc := range tests {
		img, ok := proxyImage(cfg, tc.ref)
		got := ""
		if ok {
			got = img.String()
		}
		if got != tc.want {
			t.Errorf("proxyImage(%q) = %q, want %q", tc.ref, got, tc.want)
		}
	}
}

func TestStatusDigestOnlyForTheSameRepository(t *testing.T) {
	cfg := testConfig(t)
	const d = digest.Digest("sha256:0215042b4a939364aea5bdbfe4df12885ad8c0391e960db6fffe92a18f16e0ff")
	nginx, _ := proxyImage(cfg, "pullbroker.example/docker.io/library/nginx:1.27")
	tests := []struct {
		imageID string
		want    digest.Digest
	}{
		{"docker.io/library/nginx@" + d.String(), d},                    // containerd, CRI-O
		{"docker-pullable://nginx@" + d.String(), d},                    // dockershim
		{"pullbroker.example/docker.io/library/nginx@" + d.String(), d}, // pulled through the prefix
		{"sha256:" + d.Encoded(), ""},                                   // an image ID: the config, no manifest
		{"docker.io/library/redis@" + d.String(), ""},                   // another repository
		{"ghcr.io/library/nginx@" + d.String(), ""},                     // another registry
		{"", ""},                             // not pulled yet
		{"docker.io/library/nginx:1.27", ""}, // no digest
	}
	for _, tc := range tests {
		if got := statusDigest(cfg, nginx, tc.imageID); got != tc.want {
			t.Errorf("statusDigest(%q) = %q, want %q", tc.imageID, got, tc.want)
		}
	}
}

// TestInformerKeepsOnlyImages checks the transform: of a Pod, the informer
// keeps the key, the containers' names and images and the statuses'
// imageIDs, and nothing else that a large cluster would make costly.
func TestInformerKeepsOnlyImages(t *testing.T) {
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "apps", UID: "u1", ResourceVersion: "7",
			Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"big": strings.Repeat("x", 1000)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox", Command: []string{"sh", "-c", "true"}}},
			Containers: []corev1.Container{{Name: "web", Image: "nginx:1.27", Args: []string{"-g", "daemon off;"},
				Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "alpine", Stdin: true}}},
			NodeName:            "node-1",
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.0.0.1",
			Conditions:            []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "init", Image: "busybox", ImageID: "docker.io/library/busybox@sha256:aa", ContainerID: "containerd://1"}},
			ContainerStatuses:     []corev1.ContainerStatus{{Name: "web", Image: "nginx:1.27", ImageID: "docker.io/library/nginx@sha256:bb", Ready: true}},
		},
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps", UID: "u1", ResourceVersion: "7"},
		Spec: corev1.PodSpec{
			InitContainers:      []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:          []corev1.Container{{Name: "web", Image: "nginx:1.27"}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "alpine"}}},
		},
		Status: corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "init", ImageID: "docker.io/library/busybox@sha256:aa"}},
			ContainerStatuses:     []corev1.ContainerStatus{{Name: "web", ImageID: "docker.io/library/nginx@sha256:bb"}},
		},
	}
	got, err := podImages(full)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("kept %+v\nwant %+v", got, want)
	}
	tombstone := toolscache.DeletedFinalStateUnknown{Key: "apps/web"}
	if got, err := podImages(tombstone); err != nil || got != tombstone {
		t.Errorf("a tombstone came back as %v, %v", got, err)
	}
}
