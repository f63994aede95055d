package e2e

import (
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestRealClientsPullThrough is issue 2's end-to-end proof: an image of several layers and a
// multi-arch index, pushed with crane to a docker-registry behind htpasswd, pulled through
// pullbroker by skopeo, crane, containerd (by prefix and as a mirror) and podman, none of which has
// a credential. Every digest is compared with what the registry itself gives (crane digest with
// its credentials), and every blob of every platform is checked.
func TestRealClientsPullThrough(t *testing.T) {
	f := newFixture(t)
	pb := f.startPullbroker(pbConfig{})
	images := f.images()

	t.Run("anonymous upstream refused", func(t *testing.T) {
		// The registry really demands the credential pullbroker holds.
		if _, err := testenv.TryCrane(t, "digest", "--insecure", f.upstream.Addr+"/"+appRepo+":"+appTag); err == nil {
			t.Fatal("anonymous crane digest against the upstream succeeded")
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		for _, ref := range sortedKeys(images) {
			n := skopeoPull(t, pb.ref(ref), images[ref])
			t.Logf("skopeo %s: %s, %d blobs verified", ref, images[ref], n)
		}
	})

	t.Run("crane", func(t *testing.T) {
		for _, ref := range sortedKeys(images) {
			if got := testenv.Crane(t, "digest", "--insecure", pb.ref(ref)); got != images[ref] {
				t.Errorf("crane digest %s = %s, upstream has %s", ref, got, images[ref])
			}
			n := cranePull(t, pb.ref(ref), images[ref])
			t.Logf("crane pull %s: %d blobs verified", ref, n)
		}
		// By digest too, each platform's image of the index.
		for platform, d := range f.multi.Platforms {
			if got := testenv.Crane(t, "digest", "--insecure", pb.ref(appRepo+"@"+d)); got != d {
				t.Errorf("crane digest of %s image by digest = %s, want %s", platform, got, d)
			}
		}
	})

	t.Run("containerd by prefix", func(t *testing.T) {
		socket := testenv.StartContainerd(t)
		for _, ref := range sortedKeys(images) {
			ctrPullPrefix(t, socket, pb.ref(ref), images[ref])
		}
	})

	t.Run("containerd mirror", func(t *testing.T) {
		socket := testenv.StartContainerd(t)
		hostsDir := mirrorHostsDir(t, pb.Addr)
		for _, ref := range sortedKeys(images) {
			ctrPullMirror(t, socket, hostsDir, ref, images[ref])
		}
		// The mirror form names no registry in the path: only ?ns= can have routed these.
		if log := pb.logs(t); !strings.Contains(log, `"path":"/v2/`+appRepo+`/manifests/`+multiTag+`"`) {
			t.Errorf("pullbroker's log shows no mirror-form request /v2/%s/manifests/%s", appRepo, multiTag)
		}
	})

	t.Run("podman by prefix", func(t *testing.T) {
		store := testenv.NewPodmanStore(t)
		for _, ref := range sortedKeys(images) {
			testenv.Podman(t, store, "pull", "--tls-verify=false", pb.ref(ref))
			if got := testenv.Podman(t, store, "image", "inspect", "--format", "{{.Digest}}", pb.ref(ref)); got != images[ref] {
				t.Errorf("podman pulled %s as %s, upstream has %s", ref, got, images[ref])
			}
		}
	})
}
