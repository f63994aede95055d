package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// upstreamName is the name clients use for the docker-registry upstream: the first path component
// of the image-prefix form and the ?ns= value of containerd's mirror form. It resolves nowhere;
// pullbroker connects to the configured endpoint.
const upstreamName = "upstream.test"

// upstreamConfig is one entry of the generated config's upstreams list.
type upstreamConfig struct {
	Name     string // default upstreamName
	Endpoint string // http://127.0.0.1:PORT
	// Username and PasswordFile are the only credential: clients never have one.
	Username, PasswordFile string
	// Secret ("namespace/name"), instead, names a Kubernetes Secret watched through the API
	// server of Kubeconfig.
	Secret, Kubeconfig string
	Mode               string        // "" inherits the global mode
	TagTTL             time.Duration // 0: pullbroker's default (5m)
	// Repositories are the globs this upstream may serve; empty allows all.
	Repositories []string
}

// pbConfig is what a test chooses of a pullbroker's config; the listeners are always on free
// 127.0.0.1 ports and the storage is the filesystem driver unless S3 is set.
type pbConfig struct {
	Upstreams []upstreamConfig
	// Mode is the global mode: "" (online) or "offline".
	Mode string
	// StorageDir is the cache root; "" makes a fresh one. Two pullbrokers given the same
	// directory share one cache, as replicas sharing a bucket do.
	StorageDir string
	// S3, when set, is the storage instead of StorageDir: its bucket through distribution's s3
	// driver. Two pullbrokers given the same server share one cache.
	S3 *testenv.S3Server
	// Redirect is storage.redirect (S3 only).
	Redirect bool
	// RecordCacheTTL is storage.recordCacheTTL (0: read storage every time).
	RecordCacheTTL time.Duration
	AdminTokenFile string
	DrainTimeout   time.Duration // 0: 30s
	// Access is the access section's body, as YAML indented under "access:".
	Access string
	// Fills is storage.fills as a YAML flow mapping ("{stallTimeout: 2s}"); "" for the defaults.
	Fills string
	// MaxSizeBytes and EvictMinIdle are storage.maxSizeBytes and storage.evictMinIdle (0: the
	// defaults).
	MaxSizeBytes int64
	EvictMinIdle time.Duration
	// Cluster is the cluster section's body, as YAML indented under "cluster:".
	Cluster string
	// Pins is the pins section's body, as YAML indented under "pins:".
	Pins string
	// PeerTLS is cluster.peerTLS as a YAML flow mapping, for startPeerReplicas.
	PeerTLS string
}

// pullbroker is a running `pullbroker serve`.
type pullbroker struct {
	Addr       string // client listener, 127.0.0.1:PORT
	Admin      string // admin listener, 127.0.0.1:PORT
	ConfigPath string
	StorageDir string
	// killed: the test killed it on purpose, so its exit status says nothing.
	killed bool

	*testenv.Process
}

// kill9 ends pullbroker at once with SIGKILL, as a crash or the OOM killer would.
func (p *pullbroker) kill9() {
	p.killed = true
	p.Kill()
}

// writeConfig renders cfg with the given listeners and returns the file's path.
func writeConfig(t *testing.T, cfg pbConfig, listen, admin string) string {
	t.Helper()
	drain := cfg.DrainTimeout
	if drain == 0 {
		drain = 30 * time.Second
	}
	mode := cfg.Mode
	if mode == "" {
		mode = "online"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listen:\n  addr: %q\n  drainTimeout: %s\n", listen, drain)
	fmt.Fprintf(&b, "admin:\n  addr: %q\n  tokenFile: %q\n", admin, cfg.AdminTokenFile)
	if cfg.S3 != nil {
		fmt.Fprintf(&b, "storage:\n  driver: s3\n  redirect: %t\n  recordCacheTTL: %s\n  spoolDir: %q\n  parameters:\n", cfg.Redirect, cfg.RecordCacheTTL, t.TempDir())
		for _, k := range sortedKeys(cfg.S3.Parameters()) {
			fmt.Fprintf(&b, "    %s: %#v\n", k, cfg.S3.Parameters()[k])
		}
	} else {
		fmt.Fprintf(&b, "storage:\n  driver: filesystem\n  parameters:\n    rootdirectory: %q\n", cfg.StorageDir)
	}
	if cfg.Fills != "" {
		fmt.Fprintf(&b, "  fills: %s\n", cfg.Fills)
	}
	if cfg.MaxSizeBytes != 0 {
		fmt.Fprintf(&b, "  maxSizeBytes: %d\n", cfg.MaxSizeBytes)
	}
	if cfg.EvictMinIdle != 0 {
		fmt.Fprintf(&b, "  evictMinIdle: %s\n", cfg.EvictMinIdle)
	}
	// debug: the more the proxy logs, the more the leak checks see.
	fmt.Fprintf(&b, "log:\n  format: json\n  level: debug\n")
	fmt.Fprintf(&b, "mode: %s\ndefaultUpstream: \"\"\ndisableDefaultUpstreams: true\nupstreams:\n", mode)
	for _, u := range cfg.Upstreams {
		name := u.Name
		if name == "" {
			name = upstreamName
		}
		fmt.Fprintf(&b, "  - name: %q\n    endpoint: %q\n", name, u.Endpoint)
		if u.Mode != "" {
			fmt.Fprintf(&b, "    mode: %s\n", u.Mode)
		}
		if u.TagTTL != 0 {
			fmt.Fprintf(&b, "    tagTTL: %s\n", u.TagTTL)
		}
		// A short dial timeout: a killed upstream refuses at once anyway.
		fmt.Fprintf(&b, "    dialTimeout: 2s\n    responseTimeout: 20s\n")
		switch {
		case u.Username != "":
			fmt.Fprintf(&b, "    credentials:\n      basic:\n        username: %q\n        passwordFile: %q\n", u.Username, u.PasswordFile)
		case u.Secret != "":
			fmt.Fprintf(&b, "    credentials:\n      kubernetesSecret:\n        name: %q\n        kubeconfig: %q\n", u.Secret, u.Kubeconfig)
		}
		for i, r := range u.Repositories {
			if i == 0 {
				fmt.Fprintf(&b, "    repositories:\n")
			}
			fmt.Fprintf(&b, "      - %q\n", r)
		}
	}
	if cfg.Access != "" {
		fmt.Fprintf(&b, "access:\n%s\n", cfg.Access)
	}
	if cfg.Cluster != "" {
		fmt.Fprintf(&b, "cluster:\n%s\n", cfg.Cluster)
	}
	if cfg.Pins != "" {
		fmt.Fprintf(&b, "pins:\n%s\n", cfg.Pins)
	}
	path := filepath.Join(t.TempDir(), "pullbroker.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A port taken between FreePort and pullbroker's bind makes it exit; new ports are tried.
const pullbrokerStartAttempts = 3

// startPullbroker runs `pullbroker serve` with cfg and waits until both listeners answer. On
// cleanup it sends SIGTERM and expects exit status 0, then searches the whole log for the test's
// secrets and for race reports.
func startPullbroker(t *testing.T, sec *secrets, cfg pbConfig) *pullbroker {
	t.Helper()
	if cfg.StorageDir == "" {
		cfg.StorageDir = t.TempDir()
	}
	for attempt := 1; ; attempt++ {
		p := &pullbroker{
			Addr:       fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			Admin:      fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			StorageDir: cfg.StorageDir,
		}
		p.ConfigPath = writeConfig(t, cfg, p.Addr, p.Admin)
		p.Process = testenv.StartProcess(t, "pullbroker", exec.Command(pullbrokerBin, "serve", "--config", p.ConfigPath))
		err := p.WaitReady(30*time.Second, p.answers)
		if err == nil {
			t.Cleanup(func() { p.cleanup(t, sec) })
			return p
		}
		log := p.logs(t)
		if p.Exited() && strings.Contains(log, "address already in use") && attempt < pullbrokerStartAttempts {
			continue
		}
		p.Kill()
		t.Fatalf("pullbroker did not start: %v\n%s", err, log)
	}
}

// answers reports whether both listeners answer. The registry answers /v2/ with 401 when access
// rules want client credentials: answering at all is what counts there.
func (p *pullbroker) answers() bool {
	client := &http.Client{Timeout: 2 * time.Second}
	ok := func(url string) bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
	}
	return ok("http://"+p.Addr+"/v2/") && ok("http://"+p.Admin+"/healthz")
}

func (p *pullbroker) cleanup(t *testing.T, sec *secrets) {
	if err := p.Terminate(45 * time.Second); err != nil && !p.killed {
		t.Errorf("pullbroker on %s did not exit with status 0 after SIGTERM: %v", p.Addr, err)
	}
	log := p.logs(t)
	sec.check(t, "pullbroker log ("+p.LogPath()+")", []byte(log))
	checkNoRace(t, "pullbroker", log)
	t.Logf("pullbroker %s: %d log lines searched for secrets", p.Addr, strings.Count(log, "\n"))
	// On failure, the Process's own cleanup prints the end of the log.
}

func (p *pullbroker) logs(t *testing.T) string {
	t.Helper()
	log, err := p.Log()
	if err != nil {
		t.Errorf("pullbroker log: %v", err)
	}
	return log
}

func checkNoRace(t *testing.T, what, output string) {
	t.Helper()
	if strings.Contains(output, "WARNING: DATA RACE") {
		t.Errorf("%s reported a data race", what)
	}
}

// ref is the image-prefix reference of repo ("team/app:v1", "team/app@sha256:...") on p.
func (p *pullbroker) ref(repo string) string { return p.Addr + "/" + upstreamName + "/" + repo }

// url is a URL on the client listener.
func (p *pullbroker) url(path string) string { return "http://" + p.Addr + path }

// metrics returns the /metrics page of the admin listener.
func (p *pullbroker) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + p.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s, %v", resp.Status, err)
	}
	return string(b)
}

// runCLI runs a pullbroker command (sync, export, import, pin ...) to completion and returns its
// combined output, which is searched for the secrets. A failure fails the test.
func runCLI(t *testing.T, sec *secrets, args ...string) string {
	t.Helper()
	out, err := tryCLI(t, sec, args...)
	if err != nil {
		t.Fatalf("pullbroker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func tryCLI(t *testing.T, sec *secrets, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(pullbrokerBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	testenv.KillWithParent(cmd)
	err := cmd.Run()
	sec.check(t, "output of pullbroker "+strings.Join(args, " "), out.Bytes())
	checkNoRace(t, "pullbroker "+args[0], out.String())
	return out.String(), err
}
