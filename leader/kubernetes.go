package leader

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/pullbroker/pullbroker/internal/kubeclient"
)

// kubernetesLease is the election through a coordination.k8s.io Lease, by
// client-go's leader election.
type kubernetesLease struct {
	e         *Elector
	client    coordinationv1client.LeasesGetter
	namespace string
	// logger takes client-go's log lines (through klog) into the Elector's.
	logger logr.Logger
}

func newKubernetesLease(e *Elector, kubeconfig string) (*kubernetesLease, error) {
	cfg, err := kubeclient.RESTConfig(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("cluster.kubeconfig: %w", err)
	}
	namespace := e.cfg.Namespace
	if namespace == "" {
		if namespace, err = kubeclient.Namespace(kubeconfig); err != nil {
			return nil, fmt.Errorf("cluster.leaderElection.namespace: empty, and %w; set it", err)
		}
	}
	cfg.UserAgent = "pullbroker"
	client, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	k := &kubernetesLease{e: e, client: client, namespace: namespace, logger: logr.FromSlogHandler(e.log.Handler())}
	// client-go checks the durations once more; better at start than at
	// the first election.
	if _, err := leaderelection.NewLeaderElector(k.electionConfig(func(context.Context) {}, func(time.Time) {})); err != nil {
		return nil, fmt.Errorf("cluster.leaderElection: %w", err)
	}
	return k, nil
}

func (k *kubernetesLease) run(ctx context.Context, lead func(context.Context)) {
	for {
		k.term(ctx, lead)
		// After a lost or ended term, like the storage backend: the others
		// get a chance at a released lease.
		if !sleep(ctx, k.e.cfg.RetryPeriod) {
			return
		}
	}
}

// term runs client-go's election once: until this replica led and
// stopped, or ctx ended. It returns once lead has returned.
func (k *kubernetesLease) term(ctx context.Context, lead func(context.Context)) {
	// Ended by term, not by ctx: client-go releases the lease when it
	// ends, which must wait for lead to return.
	electCtx, endElection := context.WithCancel(context.WithoutCancel(ctx))
	defer endElection()

	var (
		mu        sync.Mutex
		over      bool          // the election ended; lead must not start
		leadDone  chan struct{} // closed when lead returned; nil until it started
		confirmed time.Time     // start of the last write that held the lease
		t         *tenure
	)
	renewed := func(start time.Time) {
		mu.Lock()
		defer mu.Unlock()
		confirmed = start
		if t != nil {
			t.renewed(start)
		}
	}
	// client-go calls this on a goroutine of its own once the lease is
	// taken, with a context that ends only after its renewals stopped and
	// the lease was released; the tenure ends at renewDeadline after the
	// last renewal, as client-go's renewals do.
	started := func(leading context.Context) {
		mu.Lock()
		if over {
			mu.Unlock()
			return
		}
		leadDone = make(chan struct{})
		t = newTenure(leading, confirmed, k.e.cfg.RenewDeadline)
		done, tenure := leadDone, t
		mu.Unlock()
		defer close(done)
		defer tenure.stop()
		k.e.runLead(ctx, tenure.ctx, lead)
		endElection()
	}
	le, err := leaderelection.NewLeaderElector(k.electionConfig(started, renewed))
	if err != nil {
		// newKubernetesLease checked the same configuration.
		k.e.log.Error("leader election", "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if leadDone == nil {
			over = true
			endElection()
		}
	})
	defer stop()
	le.Run(klog.NewContext(electCtx, k.logger))
	mu.Lock()
	over = true
	done := leadDone
	mu.Unlock()
	if done != nil {
		<-done
	}
}

func (k *kubernetesLease) electionConfig(started func(context.Context), renewed func(time.Time)) leaderelection.LeaderElectionConfig {
	cfg := k.e.cfg
	return leaderelection.LeaderElectionConfig{
		Lock: &renewalsLock{
			Interface: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Namespace: k.namespace, Name: cfg.LeaseName},
				Client:     k.client,
				LockConfig: resourcelock.ResourceLockConfig{Identity: k.e.identity},
			},
			renewed: renewed,
		},
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: started,
			// Required; the end of leadership is seen where lead runs
			// (runLead).
			OnStoppedLeading: func() {},
			OnNewLeader:      k.e.observe,
		},
	}
}

// renewalsLock reports every write that holds the lease for this replica,
// so that the tenure can end renewDeadline after the last one: client-go
// ends its own leading context only after it tried to release the lease,
// which can take another renewDeadline when the API server is unreachable.
type renewalsLock struct {
	resourcelock.Interface
	renewed func(start time.Time)
}

func (l *renewalsLock) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	start := time.Now()
	err := l.Interface.Create(ctx, r)
	if err == nil && r.HolderIdentity == l.Identity() {
		l.renewed(start)
	}
	return err
}

func (l *renewalsLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	start := time.Now()
	err := l.Interface.Update(ctx, r)
	if err == nil && r.HolderIdentity == l.Identity() {
		l.renewed(start)
	}
	return err
}
