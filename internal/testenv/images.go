package testenv

import (
	"archive/tar"
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Crane runs the pinned crane without credentials and returns its trimmed stdout. Pass
// --insecure yourself for plain-HTTP registries.
func Crane(t testing.TB, args ...string) string {
	t.Helper()
	out, err := TryCrane(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryCrane is Crane for commands that may fail: the error carries crane's stderr.
func TryCrane(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runTool(craneCmd(t, "", nil, args))
}

// CraneAs runs crane logged in to registry host (host:port) with auth.
func CraneAs(t testing.TB, host string, auth BasicAuth, args ...string) string {
	t.Helper()
	return mustRun(t, craneCmd(t, host, &auth, args))
}

// craneCmd builds a crane command with a docker config of its own, so neither the machine's
// ~/.docker/config.json nor another test's login leaks into it.
func craneCmd(t testing.TB, host string, auth *BasicAuth, args []string) *exec.Cmd {
	t.Helper()
	bin := Tool(t, "crane")
	return withEnv(exec.Command(bin, args...), "DOCKER_CONFIG="+dockerConfig(t, host, auth))
}

// dockerConfig writes a docker config folder holding auth for host (or nothing) and returns it.
func dockerConfig(t testing.TB, host string, auth *BasicAuth) string {
	t.Helper()
	dir := t.TempDir()
	if auth == nil {
		return dir
	}
	token := base64.StdEncoding.EncodeToString([]byte(auth.String()))
	config, err := json.Marshal(map[string]any{"auths": map[string]any{host: map[string]string{"auth": token}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), config, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// PushTestImage pushes registryAddr/repo:tag, an OCI image for linux/<GOARCH> made of `layers`
// layers, each a tarball holding one file of layerSizeBytes random bytes (so no two layers, and no
// two calls, share a blob). auth may be nil. It returns the manifest digest ("sha256:...").
func PushTestImage(t testing.TB, registryAddr, repo, tag string, layers int, layerSizeBytes int64, auth *BasicAuth) string {
	t.Helper()
	ref := registryAddr + "/" + repo + ":" + tag
	return pushImage(t, registryAddr, auth, ref, "linux/"+runtime.GOARCH, layers, layerSizeBytes)
}

// MultiArchImage is what PushMultiArchIndex pushed.
type MultiArchImage struct {
	// Digest is the index's digest; the index is tagged with the tag asked for.
	Digest string
	// Platforms maps "linux/amd64" and "linux/arm64" to their image manifest's digest; each image
	// is also tagged "<tag>-linux-amd64" / "<tag>-linux-arm64".
	Platforms map[string]string
}

// MultiArchPlatforms are the platforms PushMultiArchIndex puts in its index.
var MultiArchPlatforms = []string{"linux/amd64", "linux/arm64"}

// PushMultiArchIndex pushes registryAddr/repo:tag as an OCI index of one linux/amd64 and one
// linux/arm64 image, each like PushTestImage's, with different random layers. auth may be nil.
func PushMultiArchIndex(t testing.TB, registryAddr, repo, tag string, layers int, layerSizeBytes int64, auth *BasicAuth) MultiArchImage {
	t.Helper()
	image := MultiArchImage{Platforms: map[string]string{}}
	args := []string{"index", "append", "--insecure", "-t", registryAddr + "/" + repo + ":" + tag}
	for _, platform := range MultiArchPlatforms {
		ref := registryAddr + "/" + repo + ":" + tag + "-" + strings.ReplaceAll(platform, "/", "-")
		digest := pushImage(t, registryAddr, auth, ref, platform, layers, layerSizeBytes)
		image.Platforms[platform] = digest
		args = append(args, "-m", registryAddr+"/"+repo+"@"+digest)
	}
	image.Digest = digestOf(t, mustRun(t, craneCmd(t, registryAddr, auth, args)))
	return image
}

// pushImage appends random layers to an empty OCI image, then sets its platform: crane append
// leaves os and architecture empty, which real images never have.
func pushImage(t testing.TB, host string, auth *BasicAuth, ref, platform string, layers int, layerSizeBytes int64) string {
	t.Helper()
	if layers < 1 {
		t.Fatalf("push %s: need at least one layer, got %d", ref, layers)
	}
	dir, err := os.MkdirTemp("", "pullbroker-layers-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir) // layers can be large; don't keep them until the test ends
	args := []string{"append", "--insecure", "--oci-empty-base", "-t", ref}
	for i := range layers {
		args = append(args, "-f", writeRandomLayer(t, dir, i, layerSizeBytes))
	}
	mustRun(t, craneCmd(t, host, auth, args))
	out := mustRun(t, craneCmd(t, host, auth, []string{"mutate", "--insecure", "--set-platform", platform, "-t", ref, ref}))
	return digestOf(t, out)
}

// digestOf extracts the digest from crane's "host/repo@sha256:..." output.
func digestOf(t testing.TB, craneOutput string) string {
	t.Helper()
	lines := strings.Split(craneOutput, "\n")
	_, digest, ok := strings.Cut(lines[len(lines)-1], "@")
	if !ok || !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("no digest in crane output %q", craneOutput)
	}
	return digest
}

// writeRandomLayer writes an uncompressed layer tarball with one file of size random bytes and
// returns its path. Random content keeps every blob unique and incompressible, like real layers
// as far as transfer cost goes.
func writeRandomLayer(t testing.TB, dir string, index int, size int64) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("layer%d.tar", index))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(buf)
	header := &tar.Header{Name: fmt.Sprintf("layer%d/random.bin", index), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(header); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := buf.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
