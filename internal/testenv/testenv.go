// Package testenv starts and drives the real programs that end-to-end tests run against: Debian's
// docker-registry as an upstream, versitygw, fake-gcs-server and Azurite as S3, GCS and Azure
// object storage, crane to make images, skopeo, containerd (ctr) and podman as clients, the OCI
// conformance suite and the envtest Kubernetes binaries.
//
// scripts/install-test-deps.sh installs them all; scripts/test.sh runs the tests inside a
// loopback-only network namespace and sets PULLBROKER_REQUIRE_TOOLS=1, so that a tool missing in
// CI fails the test instead of skipping it quietly. Without that variable a missing tool skips.
//
// Every helper fails the test (t.Fatal) on error and cleans up after itself with t.Cleanup.
// Servers listen on 127.0.0.1 only.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Environment variables read by this package (set by scripts/test.sh).
const (
	// RequireToolsEnv, when set to anything, turns "tool missing: skip" into a test failure.
	RequireToolsEnv = "PULLBROKER_REQUIRE_TOOLS"
	// ToolsEnv names the folder holding the pinned tools (crane, conformance, versitygw,
	// fake-gcs-server, azurite-blob).
	ToolsEnv = "PULLBROKER_TEST_TOOLS"
	// KubeAssetsEnv names the folder holding etcd and kube-apiserver, as envtest expects.
	KubeAssetsEnv = "KUBEBUILDER_ASSETS"
)

// BasicAuth is a user name and password for a test registry.
type BasicAuth struct {
	Username, Password string
}

// String renders the credentials as "user:password", the form skopeo's --creds and ctr's --user
// take.
func (a BasicAuth) String() string { return a.Username + ":" + a.Password }

// missing skips the test for a tool that is not installed, or fails it when the run demands every
// tool (CI), so that a broken install can never pass as a green run with everything skipped.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...) + "; run scripts/install-test-deps.sh (scripts/test.sh does)"
	if os.Getenv(RequireToolsEnv) != "" {
		t.Fatalf("%s [%s is set, so this fails instead of skipping]", msg, RequireToolsEnv)
	}
	t.Skip(msg)
}

// cacheDir is the folder scripts/install-test-deps.sh fills. It is a fallback for a plain
// `go test` run after an install, where the environment variables are not set.
func cacheDir() string {
	if dir := os.Getenv("PULLBROKER_TEST_CACHE"); dir != "" {
		return dir
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "pullbroker-test")
}

// Tool finds an executable: the pinned Go tools in $PULLBROKER_TEST_TOOLS (or the install
// cache), then $PATH for the Debian packages.
func Tool(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv(ToolsEnv)
	if dir == "" {
		dir = filepath.Join(cacheDir(), "tools")
	}
	if path := filepath.Join(dir, name); isExecutable(path) {
		return path
	}
	if path, err := exec.LookPath(name); err == nil {
		return path
	}
	missing(t, "%s not found in %s or $PATH", name, dir)
	return ""
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another process may take
// it before the caller binds it; StartDockerRegistry retries for that reason.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ConformanceBinary returns the path of the OCI distribution-spec conformance suite binary.
func ConformanceBinary(t testing.TB) string {
	t.Helper()
	return Tool(t, "conformance")
}

// KubeAssets returns the folder holding etcd and kube-apiserver, for envtest's
// BinaryAssetsDirectory.
func KubeAssets(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(KubeAssetsEnv)
	if dir == "" {
		dir = filepath.Join(cacheDir(), "kubebuilder-assets")
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if !isExecutable(filepath.Join(dir, bin)) {
			missing(t, "%s not found in %s", bin, dir)
		}
	}
	return dir
}
