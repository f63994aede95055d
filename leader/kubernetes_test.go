package leader_test

import (
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// One kube-apiserver (with etcd) for the package, started by the first
// test that needs it and stopped by TestMain; each test uses a Lease of
// its own.
var (
	apiOnce sync.Once
	apiEnv  *envtest.Environment
	apiRest *rest.Config
	apiErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if apiEnv != nil {
		_ = apiEnv.Stop()
	}
	os.Exit(code)
}

// apiServer returns a cluster-admin config of the shared API server, or
// skips when the binaries are not there (fails under
// PULLBROKER_REQUIRE_TOOLS=1).
func apiServer(t *testing.T) *rest.Config {
	t.Helper()
	// Outside the Once, so that a skip cannot leave it half done.
	testenv.KubeAssets(t)
	apiOnce.Do(func() {
		env := testenv.NewAPIServerEnvironment(t)
		if apiRest, apiErr = env.Start(); apiErr == nil {
			apiEnv = env
		}
	})
	if apiErr != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", apiErr)
	}
	return apiRest
}

// Two replicas on a Lease of a real kube-apiserver, found through a
// kubeconfig file as cluster.kubeconfig names it (the Lease in the
// context's namespace): one leads, and stopping it releases the Lease so
// that the other leads at once.
func TestKubernetesHandover(t *testing.T) {
	apiserver := apiServer(t)
	kubeconfig := testenv.KubeconfigFile(t, apiserver)
	leases, err := coordinationv1client.NewForConfig(apiserver)
	if err != nil {
		t.Fatal(err)
	}
	const lease = 5 * time.Second
	cfg := config.Cluster{Kubeconfig: kubeconfig, LeaderElection: config.LeaderElection{
		Backend:       config.LeaderElectionKubernetes,
		LeaseDuration: lease, RenewDeadline: 3 * time.Second, RetryPeriod: 300 * time.Millisecond,
		LeaseName: "handover",
	}}
	holder := func() string {
		t.Helper()
		l, err := leases.Leases("default").Get(t.Context(), "handover", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	ls := &leaders{}
	rs := []*replica{startReplica(t, ls, "a", cfg, nil), startReplica(t, ls, "b", cfg, nil)}
	theLeader(t, 30*time.Second, rs...)
	first := exactlyOneLeads(t, time.Second, rs...)
	if h := holder(); !strings.HasPrefix(h, first.name+"_") {
		t.Fatalf("Lease holder %q, want %s's identity", h, first.name)
	}

	stopped := time.Now()
	first.stop()
	second := theLeader(t, lease, others(rs, first)...)
	t.Logf("%s took over %s after %s stopped", second.name, time.Since(stopped).Round(time.Millisecond), first.name)
	if took := time.Since(stopped); took >= lease {
		t.Fatalf("took %s: the Lease was not released", took)
	}
	if h := holder(); !strings.HasPrefix(h, second.name+"_") {
		t.Fatalf("Lease holder %q, want %s's identity", h, second.name)
	}
	if second.gauge() != 1 || first.gauge() != 0 {
		t.Fatalf("pullbroker_leader: %s %v, %s %v", second.name, second.gauge(), first.name, first.gauge())
	}
	second.stop()
	if h := holder(); h != "" {
		t.Fatalf("Lease holder %q after every replica stopped, want it released", h)
	}
	noOverlap(t, ls)
}

// A leader whose connection to the API server hangs stops leading within
// renewDeadline of its last renewal, before the other replica takes the
// Lease over (leaseDuration after the last renewal it saw). client-go
// alone would end the lead's context only after also failing to release
// the Lease, another renewDeadline later, by when the other leads.
func TestKubernetesPartitionedLeaderStepsDown(t *testing.T) {
	apiserver := apiServer(t)
	const (
		lease = 4 * time.Second
		renew = 2 * time.Second
		retry = 300 * time.Millisecond
	)
	cluster := func(r *rest.Config) config.Cluster {
		return config.Cluster{Kubeconfig: testenv.KubeconfigFile(t, r), LeaderElection: config.LeaderElection{
			Backend:       config.LeaderElectionKubernetes,
			LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
			LeaseName: "partition",
		}}
	}
	ls := &leaders{}
	// a reaches the API server through a proxy that can be cut; b
	// directly, and starts once a leads.
	p := startCutProxy(t, apiserver.Host)
	viaProxy := rest.CopyConfig(apiserver)
	viaProxy.Host = "https://" + p.addr()
	a := startReplica(t, ls, "a", cluster(viaProxy), nil)
	theLeader(t, 30*time.Second, a)
	b := startReplica(t, ls, "b", cluster(apiserver), nil)
	exactlyOneLeads(t, time.Second, a, b)

	cutAt := time.Now()
	p.cut()
	theLeader(t, 5*lease, b)
	_, aEnded := a.times()
	bStarted, _ := b.times()
	if aEnded.IsZero() {
		t.Fatalf("a still leads; b took over %s after the cut", bStarted.Sub(cutAt))
	}
	t.Logf("a stopped %s after the cut; b took over %s after it", aEnded.Sub(cutAt).Round(time.Millisecond), bStarted.Sub(cutAt).Round(time.Millisecond))
	if aEnded.Sub(cutAt) > renew+retry {
		t.Fatalf("a stopped %s after the cut, want within renewDeadline %s", aEnded.Sub(cutAt), renew)
	}
	if !bStarted.After(aEnded) {
		t.Fatal("b started leading before the cut-off a stopped")
	}
	noOverlap(t, ls)
}

// cutProxy forwards TCP connections to target until cut; then it drops
// them, and new ones hang: an API server that stopped answering.
type cutProxy struct {
	ln     net.Listener
	target string
	isCut  atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func startCutProxy(t *testing.T, targetURL string) *cutProxy {
	t.Helper()
	u, err := url.Parse(targetURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: u.Host}
	t.Cleanup(p.close)
	go p.serve()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		if p.isCut.Load() {
			continue // held open, never answered
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(up)
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) track(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns = append(p.conns, c)
}

// cut drops every forwarded connection; later ones hang.
func (p *cutProxy) cut() {
	p.isCut.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) close() {
	p.ln.Close()
	p.cut()
}
