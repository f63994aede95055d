package testenv

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// sandboxImage is the name the node's containerd gives the pause image it is given at start
// (imported, never pulled): a name no registry answers, so a sandbox can never cost a request.
const sandboxImage = "pullbroker.test/pause:1"

// Node is a Kubernetes node of the test's own: containerd from Debian with its CRI plugin and
// runc, and a kubelet built from the same Kubernetes version as the test API server and registered
// with it. There is no scheduler: Pods name the node in spec.nodeName. There is no CNI either:
// Pods use hostNetwork.
type Node struct {
	// Name is the Node object's name.
	Name string

	dir        string // sockets, configs, the runtime's and the kubelet's state
	socket     string
	pause      string // the pause program, built for this node
	containerd *Process
	kubelet    *Process
	// madeHostDirs are the kubeletHostDirs that did not exist before the kubelet started.
	madeHostDirs []string
}

// NodeOptions configures StartNode.
type NodeOptions struct {
	// Name is the node's name; "node-1" if empty.
	Name string
	// Kubeconfig holds the kubelet's credentials for the API server (NodeKubeconfig).
	Kubeconfig string
	// HostsDir is containerd's registry config_path: <registry>/hosts.toml files, read at every
	// pull, so a test may change them while the node runs.
	HostsDir string
}

// RequireNode skips the test (or fails it under PULLBROKER_REQUIRE_TOOLS) when a node cannot run
// here: it needs root and the tools scripts/install-test-deps.sh installs. It returns the
// kubelet's path.
func RequireNode(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "a node (containerd with runc, kubelet) needs root")
	}
	// The kubelet writes iptables rules (KUBE-FIREWALL) wherever it runs: only a namespace of the
	// test's own keeps them off the machine.
	if !loopbackOnly() {
		missing(t, "a node must run in a loopback-only network namespace (unshare -n), where its iptables rules stay")
	}
	for _, tool := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", "go"} {
		Tool(t, tool)
	}
	kubelet := filepath.Join(KubeAssets(t), "kubelet")
	if !isExecutable(kubelet) {
		missing(t, "kubelet not found in %s", filepath.Dir(kubelet))
	}
	return kubelet
}

// loopbackOnly reports whether every network interface of this network namespace is a loopback.
func loopbackOnly() bool {
	ifaces, err := net.Interfaces()
	if err != nil {
		return false
	}
	for _, i := range ifaces {
		if i.Flags&net.FlagLoopback == 0 {
			return false
		}
	}
	return true
}

// NodeKubeconfig provisions a user for a node's kubelet on env's API server and writes its
// kubeconfig. The user is system:node:<node> in system:nodes, as a real kubelet's client
// certificate names it, and also in system:masters: envtest's API server authorizes with RBAC
// only, without the Node authorizer that gives real nodes their rights.
func NodeKubeconfig(t testing.TB, env *envtest.Environment, node string) string {
	t.Helper()
	user, err := env.ControlPlane.AddUser(envtest.User{
		Name:   "system:node:" + node,
		Groups: []string{"system:nodes", "system:masters"},
	}, &rest.Config{QPS: 50, Burst: 100})
	if err != nil {
		t.Fatalf("provisioning the kubelet's user: %v", err)
	}
	cfg := user.Config()
	return KubeconfigFile(t, cfg)
}

// StartNode starts containerd and the kubelet and waits until the kubelet answers /healthz (it
// registers its Node a moment later), and on cleanup leaves nothing behind: the kubelet stopped first (so it restarts nothing), every
// CRI task killed and deleted, containerd and its shims ended, and every mount under the node's
// folders undone.
func StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	kubeletBin := RequireNode(t)
	if opts.Name == "" {
		opts.Name = "node-1"
	}
	dir := shortTempDir(t) // unix sockets live here; their paths must stay short
	n := &Node{Name: opts.Name, dir: dir, socket: filepath.Join(dir, "containerd.sock")}
	n.pause = buildPause(t, dir)
	pause := filepath.Join(dir, "pause.tar")
	writeImageTarball(t, pause, sandboxImage, n.CommandImage(t, 0))

	config := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(config, []byte(criContainerdConfig(dir, n.socket, opts.HostsDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	n.containerd = StartProcess(t, "containerd", exec.Command(Tool(t, "containerd"), "--config", config))
	// Cleanups run last in, first out: the kubelet's (registered below) stops it before teardown
	// clears the runtime, and containerd's own runs after.
	t.Cleanup(func() { n.teardown(t) })
	err := n.containerd.WaitReady(30*time.Second, func() bool {
		_, err := runTool(exec.Command(Tool(t, "ctr"), "--address", n.socket, "version"))
		return err == nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, n.containerd.LogTail())
	}
	n.ctr(t, "images", "import", pause)

	for _, d := range kubeletHostDirs {
		if _, err := os.Lstat(d); os.IsNotExist(err) {
			n.madeHostDirs = append(n.madeHostDirs, d)
		}
	}
	kubeletDir := filepath.Join(dir, "kubelet")
	kubeletConfig := filepath.Join(dir, "kubelet.yaml")
	healthz := FreePort(t)
	if err := os.WriteFile(kubeletConfig, []byte(kubeletConfiguration(dir, n.socket, FreePort(t), healthz)), 0o600); err != nil {
		t.Fatal(err)
	}
	n.kubelet = StartProcess(t, "kubelet", exec.Command(kubeletBin,
		"--config", kubeletConfig,
		"--kubeconfig", opts.Kubeconfig,
		"--hostname-override", opts.Name,
		"--root-dir", kubeletDir,
		"--cert-dir", filepath.Join(kubeletDir, "pki"),
		"--v", "2",
	))
	err = n.kubelet.WaitReady(2*time.Minute, func() bool {
		return answersOK(fmt.Sprintf("http://127.0.0.1:%d/healthz", healthz))
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, n.kubelet.LogTail())
	}
	return n
}

// ctr runs ctr on the node's containerd in the CRI's namespace (k8s.io).
func (n *Node) ctr(t testing.TB, args ...string) string {
	t.Helper()
	return Ctr(t, n.socket, append([]string{"--namespace", "k8s.io"}, args...)...)
}

// KubeletLog is the kubelet's log so far.
func (n *Node) KubeletLog() string {
	log, _ := n.kubelet.Log()
	return log
}

// ImagePull is one PullImage call the kubelet made to the CRI, as containerd logged it.
type ImagePull struct {
	Image    string
	Start    time.Time
	Duration time.Duration
	// Err is containerd's error when the pull failed.
	Err string
}

// ImagePulls returns the PullImage calls the kubelet has made so far, in order. A pull still
// running is left out.
func (n *Node) ImagePulls(t testing.TB) []ImagePull {
	t.Helper()
	log, err := n.containerd.Log()
	if err != nil {
		t.Fatal(err)
	}
	return parseImagePulls(log)
}

// parseImagePulls reads the PullImage calls from containerd's JSON log: the CRI logs
// `PullImage "ref"` when a call starts and `PullImage "ref" returns image reference "..."` or
// `PullImage "ref" failed` when it ends. Calls for one image run one after the other here
// (the kubelet serializes pulls), so each end closes the earliest open start of its image.
func parseImagePulls(log string) []ImagePull {
	started := map[string][]time.Time{}
	var pulls []ImagePull
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg   string    `json:"msg"`
			Time  time.Time `json:"time"`
			Error string    `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || !strings.HasPrefix(line.Msg, "PullImage ") {
			continue
		}
		image, rest, ok := quoted(strings.TrimPrefix(line.Msg, "PullImage "))
		if !ok {
			continue
		}
		if rest == "" {
			started[image] = append(started[image], line.Time)
			continue
		}
		if !strings.HasPrefix(rest, " returns image reference") && rest != " failed" {
			continue
		}
		if len(started[image]) == 0 {
			continue
		}
		start := started[image][0]
		started[image] = started[image][1:]
		pull := ImagePull{Image: image, Start: start, Duration: line.Time.Sub(start)}
		if rest == " failed" {
			pull.Err = line.Error
		}
		pulls = append(pulls, pull)
	}
	sort.Slice(pulls, func(i, j int) bool { return pulls[i].Start.Before(pulls[j].Start) })
	return pulls
}

// quoted splits `"x" rest` into x and rest.
func quoted(s string) (string, string, bool) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", false
	}
	end := strings.Index(s[1:], `"`)
	if end < 0 {
		return "", "", false
	}
	return s[1 : end+1], s[end+2:], true
}

// kubeletHostDirs are folders the kubelet writes to whatever its --root-dir and podLogsDir say:
// the device manager's socket, and a symlink per container log.
var kubeletHostDirs = []string{"/var/lib/kubelet", "/var/log/containers"}

// teardown clears what the kubelet and the CRI leave: a task per container and sandbox (a shim
// per Pod), their rootfs and shm mounts, the device manager's socket. The kubelet is stopped
// first so it starts nothing again. What cannot be cleared fails the test: it would disturb the
// tests that run after.
func (n *Node) teardown(t testing.TB) {
	if n.kubelet != nil {
		_ = n.kubelet.Terminate(30 * time.Second)
	}
	if !n.containerd.Exited() {
		ctr := func(args ...string) (string, error) {
			return runTool(exec.Command(Tool(t, "ctr"), append([]string{"--address", n.socket, "--namespace", "k8s.io"}, args...)...))
		}
		// Every task is killed before any is deleted: killing a Pod's sandbox ends the shim that
		// its containers share, and their delete then fails with "ttrpc: closed".
		tasks, err := ctr("tasks", "list", "--quiet")
		if err != nil {
			t.Errorf("node cleanup: %v", err)
		}
		for _, task := range strings.Fields(tasks) {
			_, _ = ctr("tasks", "kill", "--signal", "SIGKILL", task)
		}
		for _, task := range strings.Fields(tasks) {
			_, _ = ctr("tasks", "delete", "--force", task)
		}
		if left, err := ctr("tasks", "list", "--quiet"); err != nil || left != "" {
			t.Errorf("node cleanup: tasks left after kill and delete: %q %v", left, err)
		}
		if err := n.containerd.Terminate(30 * time.Second); err != nil {
			t.Logf("node cleanup: %v", err)
		}
	}
	killShims(t, n.socket)
	unmountUnder(t, n.dir)
	n.clearHostDirs(t)
}

// clearHostDirs removes the kubeletHostDirs this node made, or from those that were there
// before, what this node put in them.
func (n *Node) clearHostDirs(t testing.TB) {
	for _, d := range n.madeHostDirs {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("node cleanup: %v", err)
		}
	}
	if !slices.Contains(n.madeHostDirs, "/var/lib/kubelet") {
		_ = os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
	}
	if !slices.Contains(n.madeHostDirs, "/var/log/containers") {
		links, _ := filepath.Glob("/var/log/containers/*.log")
		for _, l := range links {
			if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, n.dir+"/") {
				_ = os.Remove(l)
			}
		}
	}
}

// killShims kills the containerd-shim-runc-v2 processes serving socket: a shim whose task could
// not be deleted outlives containerd.
func killShims(t testing.TB, socket string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if !strings.HasSuffix(args[0], "containerd-shim-runc-v2") || !bytes.Contains(cmdline, []byte(socket)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			t.Logf("node cleanup: killing shim %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder undoes every mount below dir, deepest first.
func unmountUnder(t testing.TB, dir string) {
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Logf("node cleanup: %v", err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
			t.Errorf("node cleanup: unmount %s: %v", p, err)
		}
	}
}

// criContainerdConfig is containerd with the CRI plugin, every path under dir. What it took on
// these machines: runc with cgroupfs (no systemd), restrict_oom_score_adj (root here may not lower
// oom_score_adj; without it every sandbox fails with runc's "can't get final child's PID from
// pipe"), no AppArmor (not in this kernel), and CNI folders of its own that stay empty (Pods use
// hostNetwork).
func criContainerdConfig(dir, socket, hostsDir string) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[metrics]
  address = ""

[debug]
  format = "json"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socket, socket+".ttrpc", filepath.Join(dir, "opt"),
		sandboxImage, filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "conf"), hostsDir)
}

// kubeletConfiguration: cgroupfs without QoS cgroups and with cgroup v1 allowed (these machines
// have v1), swap allowed, no eviction or image GC to interfere, the API on 127.0.0.1 only, and a
// restart back-off capped at one second so a test sees twenty restarts in well under a minute.
func kubeletConfiguration(dir, socket string, port, healthzPort int) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
podLogsDir: %s
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: true
crashLoopBackOff:
  maxContainerRestartPeriod: 1s
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
`, socket, port, healthzPort, filepath.Join(dir, "pod-logs"))
}

// CommandImage is a runnable linux/GOARCH image of one static program, /pause (see
// internal/testenv/pause): its entrypoint waits for SIGTERM, and the argument "exit" makes it exit
// at once. extraBytes of random data in the same layer make each image's digest its own (0: the
// program only).
func (n *Node) CommandImage(t testing.TB, extraBytes int64) v1.Image {
	t.Helper()
	layerPath := filepath.Join(t.TempDir(), "layer.tar")
	writeLayer(t, layerPath, n.pause, extraBytes)
	layer, err := tarball.LayerFromFile(layerPath)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = []string{"/pause"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// buildPause builds internal/testenv/pause as a static binary into dir.
func buildPause(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "pause")
	cmd := exec.Command(Tool(t, "go"), "build", "-trimpath", "-ldflags", "-s -w", "-o", path,
		"github.com/pullbroker/pullbroker/internal/testenv/pause")
	if _, err := runTool(withEnv(cmd, "CGO_ENABLED=0")); err != nil {
		t.Fatalf("building the pause program: %v", err)
	}
	return path
}

// writeLayer writes a layer tarball holding binary as /pause and, when extraBytes > 0, a file of
// that many random bytes.
func writeLayer(t testing.TB, path, binary string, extraBytes int64) {
	t.Helper()
	program, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	random := make([]byte, extraBytes)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"pause", 0o755, program}, {"random.bin", 0o644, random}} {
		if f.name == "random.bin" && extraBytes == 0 {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// answersOK reports whether a GET of url answers 200.
func answersOK(url string) bool {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// writeImageTarball writes img as a docker image tarball named ref, the form `ctr images import`
// reads.
func writeImageTarball(t testing.TB, path, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}
