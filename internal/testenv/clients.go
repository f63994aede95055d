package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Skopeo runs skopeo and returns its trimmed stdout. Pass --src-tls-verify=false (and
// --src-creds user:pass) yourself. Signature policy checks are off, and no login of the machine's
// user is read. skopeo keeps a blob-info cache in /var/lib/containers/cache (as root).
func Skopeo(t testing.TB, args ...string) string {
	t.Helper()
	out, err := TrySkopeo(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TrySkopeo is Skopeo for commands that may fail: the error carries skopeo's stderr.
func TrySkopeo(t testing.TB, args ...string) (string, error) {
	t.Helper()
	bin := Tool(t, "skopeo")
	cmd := exec.Command(bin, append([]string{"--insecure-policy"}, args...)...)
	return runTool(withEnv(cmd, noLoginEnv(t)...))
}

// noLoginEnv points the containers/image tools at empty credential files, so a login on this
// machine never changes what a test sees.
// podman insists that the auth file exists.
func noLoginEnv(t testing.TB) []string {
	t.Helper()
	dir := t.TempDir()
	authFile := filepath.Join(dir, "auth.json")
	if err := os.WriteFile(authFile, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"REGISTRY_AUTH_FILE=" + authFile, "DOCKER_CONFIG=" + dir}
}

// NewPodmanStore makes an image store for Podman in a temp dir and returns it. Pulls into one
// store are seen by later Podman calls with the same store. The dir has a short path: podman
// refuses a runroot longer than 50 characters, which a t.TempDir() under a subtest's name exceeds.
func NewPodmanStore(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "podman with overlay storage needs root")
	}
	return shortTempDir(t)
}

// Podman runs podman without a daemon on store (from NewPodmanStore) and returns its trimmed
// stdout. Pass --tls-verify=false (and --creds user:pass) yourself.
func Podman(t testing.TB, store string, args ...string) string {
	t.Helper()
	bin := Tool(t, "podman")
	global := []string{
		"--root", filepath.Join(store, "root"),
		"--runroot", filepath.Join(store, "run"),
		"--tmpdir", filepath.Join(store, "tmp"),
		"--storage-driver", "overlay",
		// Without this the overlay driver bind-mounts its home onto itself, and that mount
		// outlives the test and blocks removing the temp dir.
		"--storage-opt", "overlay.skip_mount_home=true",
		"--events-backend", "none",
		"--cgroup-manager", "cgroupfs",
	}
	cmd := exec.Command(bin, append(global, args...)...)
	return mustRun(t, withEnv(cmd, noLoginEnv(t)...))
}

// StartContainerd runs a containerd of the test's own (root, state and socket in temp dirs, CRI
// plugin and metrics off) and returns its socket, for Ctr. It needs root.
func StartContainerd(t testing.TB) string {
	t.Helper()
	bin := Tool(t, "containerd")
	if os.Geteuid() != 0 {
		missing(t, "containerd needs root")
	}
	dir := t.TempDir()
	socket := filepath.Join(shortTempDir(t), "containerd.sock")
	config := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, []byte(containerdConfig(dir, socket)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := StartProcess(t, "containerd", exec.Command(bin, "--config", config))
	ctr := Tool(t, "ctr")
	err := p.WaitReady(30*time.Second, func() bool {
		_, err := runTool(exec.Command(ctr, "--address", socket, "version"))
		return err == nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, p.LogTail())
	}
	return socket
}

// containerdConfig keeps every path containerd writes under dir (opt's default is /opt/containerd)
// and disables what a pull does not need: the CRI plugin wants a CNI setup, metrics a port.
func containerdConfig(dir, socket string) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socket, socket+".ttrpc", filepath.Join(dir, "opt"))
}

// shortTempDir is a temp dir with a short path: a unix socket path must fit in 108 bytes, which a
// t.TempDir() under a long test name may not.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Ctr runs ctr against the containerd at socket (from StartContainerd) and returns its trimmed
// stdout. Pass --plain-http (and --user user:pass) to `images pull` yourself.
func Ctr(t testing.TB, socket string, args ...string) string {
	t.Helper()
	out, err := TryCtr(t, socket, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TryCtr is Ctr for commands that may fail: the error carries ctr's stderr.
func TryCtr(t testing.TB, socket string, args ...string) (string, error) {
	t.Helper()
	bin := Tool(t, "ctr")
	return runTool(exec.Command(bin, append([]string{"--address", socket}, args...)...))
}
