package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RegistryOptions configures StartDockerRegistry.
type RegistryOptions struct {
	// Auth, when set, makes the registry demand these credentials (HTTP basic, htpasswd).
	Auth *BasicAuth
}

// StartDockerRegistry runs Debian's docker-registry (distribution 2.8) on 127.0.0.1 with its own
// storage in a temp dir, waits until /v2/ answers, and returns its address "127.0.0.1:PORT".
// It serves plain HTTP: clients need --insecure / --plain-http / --tls-verify=false.
// Deleting manifests and blobs is enabled, so tests can make an upstream lose a tag.
func StartDockerRegistry(t testing.TB, opts RegistryOptions) string {
	t.Helper()
	return RunDockerRegistry(t, opts).Addr
}

// DockerRegistry is a docker-registry started by RunDockerRegistry.
type DockerRegistry struct {
	// Addr is "127.0.0.1:PORT".
	Addr string
	p    *Process
}

// Kill ends the registry at once with SIGKILL, as a crash or an outage would, and waits until it
// has exited: from then on its port refuses connections.
func (r *DockerRegistry) Kill(t testing.TB) {
	t.Helper()
	r.p.Kill()
}

// RunDockerRegistry is StartDockerRegistry for tests that stop the registry themselves: it returns
// a handle whose Kill ends the process mid-test.
func RunDockerRegistry(t testing.TB, opts RegistryOptions) *DockerRegistry {
	t.Helper()
	bin := Tool(t, "docker-registry")
	dir := t.TempDir()
	htpasswd := ""
	if opts.Auth != nil {
		htpasswd = writeHtpasswd(t, dir, *opts.Auth)
	}
	p, addr := startOnFreePort(t, "docker-registry", func(port int) *exec.Cmd {
		return exec.Command(bin, "serve", writeRegistryConfig(t, dir, fmt.Sprintf("127.0.0.1:%d", port), htpasswd))
	}, registryAnswers)
	return &DockerRegistry{Addr: addr, p: p}
}

// writeHtpasswd writes a bcrypt htpasswd file (the only hash distribution accepts) and returns its
// path.
func writeHtpasswd(t testing.TB, dir string, auth BasicAuth) string {
	t.Helper()
	line := mustRun(t, exec.Command(Tool(t, "htpasswd"), "-Bbn", auth.Username, auth.Password))
	path := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeRegistryConfig writes the registry's config file and returns its path. The Debian package's
// own config expects an htpasswd at a fixed place and a system service, so tests never use it.
func writeRegistryConfig(t testing.TB, dir, addr, htpasswd string) string {
	t.Helper()
	config := fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: pullbroker-test
health:
  storagedriver:
    enabled: false
`, filepath.Join(dir, "data"), addr)
	if htpasswd != "" {
		config += fmt.Sprintf(`auth:
  htpasswd:
    realm: pullbroker-test
    path: %s
`, htpasswd)
	}
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// registryAnswers reports whether the distribution API root answers: 200, or 401 when it asks for
// credentials.
func registryAnswers(addr string) bool {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + addr + "/v2/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
}
