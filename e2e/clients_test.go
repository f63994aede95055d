package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// skopeoPull pulls ref through a plain-HTTP registry with skopeo, which has no credentials, and
// checks it against want: `skopeo inspect --raw` must give the manifest bytes of digest want, and
// `skopeo copy --all` into a dir: layout must hold every manifest and blob below it (every
// platform of an index) with the right digests. It returns the number of blobs checked.
//
// Digests are preserved for images (--preserve-digests). skopeo 1.9 cannot preserve an OCI index
// whose descriptors carry artifactType, as crane writes them: it re-encodes the list without the
// field and refuses with --preserve-digests. For an index the served bytes are therefore checked
// by the raw digest, and the copy by its instances, each of which keeps its digest.
func skopeoPull(t *testing.T, ref, want string) int {
	t.Helper()
	raw := testenv.Skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	if got := digestOf([]byte(raw)); got != want {
		t.Fatalf("skopeo inspect --raw %s: manifest %s, want %s", ref, got, want)
	}
	dir := t.TempDir()
	args := []string{"copy", "--all", "--src-tls-verify=false"}
	if !parseManifest(t, []byte(raw)).isIndex() {
		args = append(args, "--preserve-digests")
	}
	testenv.Skopeo(t, append(args, "docker://"+ref, "dir:"+dir)...)
	return checkSkopeoDir(t, dir, []byte(raw))
}

// cranePull pulls ref into a fresh OCI layout and checks it against want. crane has no
// credentials.
func cranePull(t *testing.T, ref, want string) int {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	testenv.Crane(t, "pull", "--insecure", "--format", "oci", ref, dir)
	return checkOCILayout(t, dir, want)
}

// ctrImage is one line of `ctr images check`.
type ctrImage struct {
	Ref, Type, Digest, Status string
	Counts                    string // "(7/7)": content present / needed
}

// ctrCheck returns what `ctr images check` says about name, failing if it is not listed.
func ctrCheck(t *testing.T, socket, name string) ctrImage {
	t.Helper()
	out := testenv.Ctr(t, socket, "images", "check")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == name {
			// STATUS is "complete (4/4)" or "incomplete (1/4)".
			img := ctrImage{Ref: f[0], Type: f[1], Digest: f[2], Status: f[3]}
			if len(f) >= 5 {
				img.Counts = f[4]
			}
			return img
		}
	}
	t.Fatalf("ctr images check does not list %s:\n%s", name, out)
	return ctrImage{}
}

// ctrExpect checks that containerd holds name, with digest want and all of its content.
func ctrExpect(t *testing.T, socket, name, want string) {
	t.Helper()
	img := ctrCheck(t, socket, name)
	t.Logf("ctr holds %s: %s %s %s", name, img.Digest, img.Status, img.Counts)
	if img.Digest != want {
		t.Errorf("ctr pulled %s as %s, upstream has %s", name, img.Digest, want)
	}
	if img.Status != "complete" {
		t.Errorf("ctr holds %s only partly: %+v", name, img)
	}
}

// ctrPullPrefix pulls ref from pullbroker by image prefix (plain HTTP, every platform) and checks it.
func ctrPullPrefix(t *testing.T, socket, ref, want string) {
	t.Helper()
	testenv.Ctr(t, socket, "images", "pull", "--plain-http", "--all-platforms", ref)
	ctrExpect(t, socket, ref, want)
}

// mirrorHostsDir is what `pullbroker hosts` writes for a node whose containerd should use the
// proxy at pbAddr as the mirror of upstreamName, with the fallback `server` on a port nothing
// listens on: a pull that succeeds came through the mirror, whose requests carry
// ?ns=upstream.test.
func mirrorHostsDir(t *testing.T, pbAddr string) string {
	t.Helper()
	dir := t.TempDir()
	writeMirrorHosts(t, dir, upstreamName, pbAddr)
	return dir
}

// writeMirrorHosts runs `pullbroker hosts` for registry, with the fallback server on a dead port,
// into dir.
func writeMirrorHosts(t *testing.T, dir, registry, pbAddr string) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "hosts-config.yaml")
	writeFile(t, cfg, fmt.Sprintf("disableDefaultUpstreams: true\ndefaultUpstream: \"\"\nupstreams:\n  - name: %s\n    endpoint: http://127.0.0.1:%d\n",
		registry, testenv.FreePort(t)))
	runCLI(t, newSecrets(), "hosts", "--config", cfg, "--proxy", "http://"+pbAddr, "--dir", dir)
	hosts, err := os.ReadFile(filepath.Join(dir, registry, "hosts.toml"))
	if err != nil {
		t.Fatalf("pullbroker hosts wrote no hosts.toml for %s: %v", registry, err)
	}
	t.Logf("hosts.toml from pullbroker hosts:\n%s", hosts)
}

// ctrPullMirror pulls upstream.test/<repo> with pullbroker as containerd's mirror and checks it.
func ctrPullMirror(t *testing.T, socket, hostsDir, repo, want string) {
	t.Helper()
	name := upstreamName + "/" + repo
	testenv.Ctr(t, socket, "images", "pull", "--hosts-dir", hostsDir, "--all-platforms", name)
	ctrExpect(t, socket, name, want)
}
