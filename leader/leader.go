// Package leader decides which replica runs the cluster-wide work (eviction,
// garbage collection): the one holding a lease, which it renews while it
// leads and releases when it stops.
//
// Two backends keep the lease:
//
//   - kubernetes: a coordination.k8s.io Lease through client-go's leader
//     election. The API server's optimistic concurrency makes a takeover
//     atomic; a leader stops when it could not renew within renewDeadline,
//     before the others may take over (leaseDuration after the last renewal
//     they saw).
//
//   - storage: a JSON object at cluster/leader in the cache's storage
//     driver, for replicas that share a bucket or a volume but no API
//     server. A driver offers no compare-and-swap, so a replica takes an
//     expired lease by writing it, waits one retryPeriod (plus as long as
//     its write took), and leads only if the object still names it. A
//     competitor whose write took longer than that to land can still win
//     after this replica started: both lead until the next renewal, which
//     reads the object first and stops the replica it no longer names, so
//     the overlap lasts about one retryPeriod. The same holds for a
//     renewal written before a partition and landing after another
//     replica took over.
//
// Neither backend reads a clock another machine set: expiry is judged by
// this replica's monotonic clock since it last saw the lease change, so
// clock skew between replicas does not matter, only how fast their clocks
// run.
//
// The work led this way (cache.Store.Lead: journal merging, eviction, GC,
// scrub) tolerates two leaders for a moment, because each step is safe on
// its own and only wasteful when repeated: GC deletes blobs that nothing
// references and that are older than its grace period, which two runs
// agree on, and a delete done twice is a delete; two evictions at once may
// together delete more than the size bound needs, and as each merges only
// the journals it reads first, one may take a blob read within the last
// interval for an old one. What is deleted that way is fetched again when
// next pulled. Such an overlap needs a competing write to land more than a
// retryPeriod after it was made, and ends at the next renewal. A lead
// must still stop promptly when its context is cancelled: leadership ends
// renewDeadline after the last confirmed renewal, which is
// leaseDuration-renewDeadline before another replica may take over.
package leader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/metricsreg"
)

// Options are what an Elector needs besides the configuration.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Driver is the storage driver of the cache, which holds the lease of
	// the storage backend; unused by the kubernetes backend.
	Driver storagedriver.StorageDriver
}

// Elector runs the election for this replica.
type Elector struct {
	cfg config.LeaderElection
	// identity names this process in the lease: the replica's name and a
	// random suffix, so that a restarted replica, or two replicas given one
	// name by mistake, are not taken for the holder they replace.
	identity string
	log      *slog.Logger
	metrics  *metrics
	campaign func(ctx context.Context, lead func(context.Context))

	mu     sync.Mutex
	leader string // the holder last seen; "" before any
}

// New returns an Elector for the backend cfg names. cfg.Name must be set
// (cmd fills in the host name).
func New(cfg config.Cluster, opts Options) (*Elector, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("cluster.name: must be set to this replica's name")
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	e := &Elector{
		cfg:      cfg.LeaderElection,
		identity: cfg.Name + "_" + hex.EncodeToString(suffix),
		log:      opts.Logger,
		metrics:  newMetrics(opts.Registerer),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	e.log = e.log.With("component", "leader", "identity", e.identity)
	switch cfg.LeaderElection.Backend {
	case config.LeaderElectionStorage:
		if opts.Driver == nil {
			return nil, fmt.Errorf("cluster.leaderElection.backend storage: no storage driver given")
		}
		e.campaign = (&storageLease{e: e, driver: opts.Driver}).run
	case config.LeaderElectionKubernetes:
		k, err := newKubernetesLease(e, cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		e.campaign = k.run
	default:
		return nil, fmt.Errorf("cluster.leaderElection.backend: %q is not one of storage, kubernetes", cfg.LeaderElection.Backend)
	}
	return e, nil
}

// Run takes part in the election until ctx ends. Each time this replica
// becomes the leader it calls lead with a context that ends when
// leadership is lost or may be lost (no renewal confirmed within
// renewDeadline, or another holder seen) or when ctx ends, and waits for
// lead to return before it campaigns again. When ctx ends, or lead returns
// on its own, the lease is released once lead has returned, so that
// another replica takes over at its next attempt rather than after
// leaseDuration (a rolling restart hands over at once). Run once per
// Elector at a time.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) {
	e.campaign(ctx, lead)
}

// runLead runs lead for as long as leading (ended by the backend) and ctx
// both last, and reports the start and end of leadership.
func (e *Elector) runLead(ctx, leading context.Context, lead func(context.Context)) {
	leadCtx, cancel := context.WithCancel(leading)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	e.metrics.leader.Set(1)
	e.log.Info("this replica leads: starting the cluster-wide work")
	// Reported as soon as leadership ends, not when lead gets to return;
	// and before runLead returns, whichever comes first.
	ended := sync.OnceFunc(func() {
		e.metrics.leader.Set(0)
		switch {
		case ctx.Err() != nil:
			e.log.Info("this replica stops leading: shutting down")
		case leading.Err() != nil:
			e.log.Warn("this replica stops leading: the lease was lost or could not be renewed in time")
		default:
			e.log.Info("this replica stops leading: the cluster-wide work returned")
		}
	})
	context.AfterFunc(leadCtx, ended)
	lead(leadCtx)
	ended()
}

// tenure is one term of leadership: its context ends renewDeadline after
// the last confirmed renewal (whatever the backend's calls are doing), or
// when ended.
type tenure struct {
	ctx           context.Context
	end           context.CancelFunc
	renewDeadline time.Duration
	timer         *time.Timer
}

// newTenure starts a tenure whose hold was last confirmed by a write
// that started at confirmed.
func newTenure(parent context.Context, confirmed time.Time, renewDeadline time.Duration) *tenure {
	ctx, end := context.WithCancel(parent)
	t := &tenure{ctx: ctx, end: end, renewDeadline: renewDeadline}
	t.timer = time.AfterFunc(time.Until(confirmed.Add(renewDeadline)), end)
	return t
}

// renewed extends the tenure after a renewal that started at start
// succeeded. An ended tenure stays ended.
func (t *tenure) renewed(start time.Time) {
	if t.ctx.Err() == nil {
		t.timer.Reset(time.Until(start.Add(t.renewDeadline)))
	}
}

func (t *tenure) stop() {
	t.timer.Stop()
	t.end()
}

// observe notes the holder named by the lease as last read.
func (e *Elector) observe(holder string) {
	if holder == "" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if holder == e.leader {
		return
	}
	if e.leader != "" {
		e.metrics.changes.Inc()
	}
	e.leader = holder
	e.log.Info("new leader", "leader", holder, "self", holder == e.identity)
}

type metrics struct {
	leader  prometheus.Gauge
	changes prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullbroker_leader",
			Help: "1 while this replica is the leader that runs eviction and garbage collection, else 0.",
		}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullbroker_leader_changes_total",
			Help: "Changes of the leader this replica saw in the lease (the first leader it saw is not counted).",
		}),
	}
	m.leader = metricsreg.Shared(reg, m.leader)
	m.changes = metricsreg.Shared(reg, m.changes)
	return m
}

// sleep waits d, or less if ctx ends first; it reports whether ctx is
// still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
