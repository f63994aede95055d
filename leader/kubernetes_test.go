package leader_test

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// Two replicas on a Lease of a real kube-apiserver, found through a
// kubeconfig file as cluster.kubeconfig names it (the Lease in the
// context's namespace): one leads, and stopping it releases the Lease so
// that the other leads at once.
func TestKubernetesHandover(t *testing.T) {
	rest := testenv.StartAPIServer(t)
	kubeconfig := testenv.KubeconfigFile(t, rest)
	leases, err := coordinationv1client.NewForConfig(rest)
	if err != nil {
		t.Fatal(err)
	}
	const lease = 5 * time.Second
	cfg := config.Cluster{Kubeconfig: kubeconfig, LeaderElection: config.LeaderElection{
		Backend:       config.LeaderElectionKubernetes,
		LeaseDuration: lease, RenewDeadline: 3 * time.Second, RetryPeriod: 300 * time.Millisecond,
		LeaseName: "pullbroker-test",
	}}
	holder := func() string {
		t.Helper()
		l, err := leases.Leases("default").Get(t.Context(), "pullbroker-test", metav1.GetOptions{})
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
