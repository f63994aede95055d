package leader_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/leader"
)

// leaders counts the replicas of one test whose lead runs, and remembers
// whether two ever ran at once.
type leaders struct {
	running atomic.Int32
	overlap atomic.Bool
	// endNextTerm, when set, makes the next lead (on any replica) return
	// on its own at once.
	endNextTerm atomic.Bool
}

// replica is one Elector running, with a lead that runs until its context
// ends.
type replica struct {
	name    string
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	stopped chan struct{} // Run returned
	leading atomic.Bool
	terms   atomic.Int32
	// startedAt and endedAt are when the last term started and ended.
	mu                 sync.Mutex
	startedAt, endedAt time.Time
}

func startReplica(t *testing.T, ls *leaders, name string, cfg config.Cluster, driver storagedriver.StorageDriver) *replica {
	t.Helper()
	r := &replica{name: name, reg: prometheus.NewRegistry(), stopped: make(chan struct{})}
	cfg.Name = name
	el, err := leader.New(cfg, leader.Options{Logger: testLogger(t, name), Registerer: r.reg, Driver: driver})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.stopped)
		el.Run(ctx, func(ctx context.Context) {
			if ls.running.Add(1) > 1 {
				ls.overlap.Store(true)
			}
			r.mu.Lock()
			r.startedAt = time.Now()
			r.mu.Unlock()
			r.leading.Store(true)
			r.terms.Add(1)
			if !ls.endNextTerm.Swap(false) {
				<-ctx.Done()
			}
			r.leading.Store(false)
			ls.running.Add(-1)
			r.mu.Lock()
			r.endedAt = time.Now()
			r.mu.Unlock()
		})
	}()
	t.Cleanup(r.stop)
	return r
}

// stop ends the replica's Run and waits for it to return.
func (r *replica) stop() {
	r.cancel()
	<-r.stopped
}

func (r *replica) times() (started, ended time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.startedAt, r.endedAt
}

func (r *replica) gauge() float64 {
	return gathered(r.reg, "pullbroker_leader")
}

func (r *replica) changes() float64 {
	return gathered(r.reg, "pullbroker_leader_changes_total")
}

func gathered(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// theLeader waits up to within for exactly one of rs to lead and returns
// it.
func theLeader(t *testing.T, within time.Duration, rs ...*replica) *replica {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var leading []*replica
		for _, r := range rs {
			if r.leading.Load() {
				leading = append(leading, r)
			}
		}
		if len(leading) == 1 {
			return leading[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d replicas lead after %s, want 1", len(leading), within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exactlyOneLeads samples rs for d and fails unless exactly one leads, the
// same one, at every sample.
func exactlyOneLeads(t *testing.T, d time.Duration, rs ...*replica) *replica {
	t.Helper()
	var first *replica
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		var leading []string
		var l *replica
		for _, r := range rs {
			if r.leading.Load() {
				leading = append(leading, r.name)
				l = r
			}
		}
		if len(leading) != 1 {
			t.Fatalf("leading: %v, want exactly one", leading)
		}
		if first == nil {
			first = l
		} else if l != first {
			t.Fatalf("leadership moved from %s to %s with nothing failing", first.name, l.name)
		}
	}
	return first
}

func noOverlap(t *testing.T, ls *leaders) {
	t.Helper()
	if ls.overlap.Load() {
		t.Fatal("two replicas led at once")
	}
}

func others(all []*replica, not *replica) []*replica {
	var out []*replica
	for _, r := range all {
		if r != not {
			out = append(out, r)
		}
	}
	return out
}

func storageCluster(lease, renew, retry time.Duration) config.Cluster {
	return config.Cluster{LeaderElection: config.LeaderElection{
		Backend:       config.LeaderElectionStorage,
		LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
		LeaseName: config.DefaultLeaseName,
	}}
}

func filesystemDriver(t *testing.T) storagedriver.StorageDriver {
	return filesystem.New(filesystem.DriverParameters{RootDirectory: t.TempDir(), MaxThreads: 100})
}

// Three replicas on one filesystem storage: one leads and keeps leading;
// when it stops it releases the lease, and another leads long before the
// lease would have expired.
func TestStorageOneLeaderAndReleaseOnStop(t *testing.T) {
	const lease = 5 * time.Second
	cfg := storageCluster(lease, 3*time.Second, 200*time.Millisecond)
	driver := filesystemDriver(t)
	ls := &leaders{}
	var rs []*replica
	for _, name := range []string{"a", "b", "c"} {
		rs = append(rs, startReplica(t, ls, name, cfg, driver))
	}
	first := theLeader(t, 10*time.Second, rs...)
	exactlyOneLeads(t, 2*time.Second, rs...)
	if first.gauge() != 1 {
		t.Fatalf("pullbroker_leader of the leader = %v, want 1", first.gauge())
	}
	for _, r := range others(rs, first) {
		if r.gauge() != 0 {
			t.Fatalf("pullbroker_leader of %s = %v, want 0", r.name, r.gauge())
		}
	}

	rest := others(rs, first)
	third := rest[0]
	thirdChanges := third.changes()
	stopped := time.Now()
	first.stop()
	second := theLeader(t, lease, rest...)
	t.Logf("%s took over %s after %s stopped", second.name, time.Since(stopped).Round(time.Millisecond), first.name)
	if took := time.Since(stopped); took >= lease {
		t.Fatalf("took %s: the lease was not released", took)
	}
	exactlyOneLeads(t, time.Second, rest...)
	noOverlap(t, ls)
	if first.gauge() != 0 || first.terms.Load() != 1 {
		t.Fatalf("stopped leader: pullbroker_leader %v, terms %d", first.gauge(), first.terms.Load())
	}
	// The third replica saw the leader change from the first to the second.
	if c := third.changes() - thirdChanges; c != 1 {
		t.Fatalf("pullbroker_leader_changes_total of %s went up by %v, want 1", third.name, c)
	}
}

// A lead that returns on its own ends the term: the lease is released and
// a term starts again (on any replica) without waiting for it to expire.
func TestStorageLeadReturningReleases(t *testing.T) {
	const lease = 5 * time.Second
	cfg := storageCluster(lease, 3*time.Second, 200*time.Millisecond)
	driver := filesystemDriver(t)
	ls := &leaders{}
	ls.endNextTerm.Store(true)
	a, b := startReplica(t, ls, "a", cfg, driver), startReplica(t, ls, "b", cfg, driver)
	// The first term ends at once; the next one runs until stopped.
	deadline := time.Now().Add(10 * time.Second)
	for a.terms.Load()+b.terms.Load() < 1 || ls.endNextTerm.Load() {
		if time.Now().After(deadline) {
			t.Fatal("no term started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	first := a
	if b.terms.Load() == 1 {
		first = b
	}
	_, ended := first.times()
	for ended.IsZero() {
		time.Sleep(10 * time.Millisecond)
		_, ended = first.times()
	}
	next := theLeader(t, 2*lease, a, b)
	started, _ := next.times()
	t.Logf("%s's term ended on its own; %s led %s later", first.name, next.name, started.Sub(ended).Round(time.Millisecond))
	if started.Sub(ended) >= lease {
		t.Fatalf("next term %s after the first ended: the lease was not released", started.Sub(ended))
	}
	if n := a.terms.Load() + b.terms.Load(); n != 2 {
		t.Fatalf("%d terms, want 2", n)
	}
	noOverlap(t, ls)
}

// partitionable is a storage driver whose lease reads and writes fail
// while cut, as when a replica loses its network to the storage.
type partitionable struct {
	storagedriver.StorageDriver
	cut atomic.Bool
}

var errPartition = errors.New("partitioned from storage")

func (p *partitionable) GetContent(ctx context.Context, path string) ([]byte, error) {
	if p.cut.Load() {
		return nil, errPartition
	}
	return p.StorageDriver.GetContent(ctx, path)
}

func (p *partitionable) PutContent(ctx context.Context, path string, content []byte) error {
	if p.cut.Load() {
		return errPartition
	}
	return p.StorageDriver.PutContent(ctx, path, content)
}

// A leader cut off from the storage stops leading within renewDeadline;
// another takes over about leaseDuration later, never before the first
// stopped; when the partition heals, the old leader does not come back.
func TestStoragePartitionedLeaderStepsDown(t *testing.T) {
	const (
		lease = 2 * time.Second
		renew = time.Second
		retry = 200 * time.Millisecond
	)
	cfg := storageCluster(lease, renew, retry)
	shared := filesystemDriver(t)
	ls := &leaders{}
	drivers := map[*replica]*partitionable{}
	var rs []*replica
	for _, name := range []string{"a", "b", "c"} {
		d := &partitionable{StorageDriver: shared}
		r := startReplica(t, ls, name, cfg, d)
		drivers[r] = d
		rs = append(rs, r)
	}
	theLeader(t, 10*time.Second, rs...)
	first := exactlyOneLeads(t, 2*time.Second, rs...)
	firstChanges := first.changes()

	cutAt := time.Now()
	drivers[first].cut.Store(true)
	second := theLeader(t, 10*lease, others(rs, first)...)
	_, firstEnded := first.times()
	secondStarted, _ := second.times()
	if firstEnded.IsZero() {
		t.Fatalf("the cut-off %s still leads; %s took over %s after the partition", first.name, second.name, secondStarted.Sub(cutAt))
	}
	t.Logf("%s stopped %s after the partition; %s took over %s after it", first.name,
		firstEnded.Sub(cutAt).Round(time.Millisecond), second.name, secondStarted.Sub(cutAt).Round(time.Millisecond))
	if firstEnded.Sub(cutAt) > renew+retry {
		t.Fatalf("the cut-off leader stopped %s after the partition, want within renewDeadline %s", firstEnded.Sub(cutAt), renew)
	}
	if !secondStarted.After(firstEnded) {
		t.Fatalf("%s started leading before the cut-off %s stopped", second.name, first.name)
	}
	if first.gauge() != 0 {
		t.Fatalf("pullbroker_leader of the cut-off leader = %v", first.gauge())
	}
	noOverlap(t, ls)

	drivers[first].cut.Store(false)
	if l := exactlyOneLeads(t, 2*time.Second, rs...); l != second {
		t.Fatalf("%s leads after the partition healed, want %s", l.name, second.name)
	}
	if first.terms.Load() != 1 {
		t.Fatalf("the old leader led %d times", first.terms.Load())
	}
	if c := first.changes() - firstChanges; c != 1 {
		t.Fatalf("pullbroker_leader_changes_total of the old leader went up by %v, want 1 (it saw %s take over)", c, second.name)
	}
	noOverlap(t, ls)
}

// Another holder renewing the lease while this replica leads (another
// replica whose takeover landed late) ends its term at its next renewal;
// it takes the lease again only once that holder let it expire.
func TestStorageLeaderYieldsToAnotherHolder(t *testing.T) {
	const (
		lease = 2 * time.Second
		retry = 200 * time.Millisecond
	)
	cfg := storageCluster(lease, time.Second, retry)
	driver := filesystemDriver(t)
	r := startReplica(t, &leaders{}, "a", cfg, driver)
	theLeader(t, 10*time.Second, r)

	// z renews faster than a, so a's renewal, which reads before it
	// writes, cannot keep overwriting it.
	zStarted := time.Now()
	var zLast time.Time
	for i := 0; time.Since(zStarted) < lease; i++ {
		zLast = time.Now()
		other := fmt.Sprintf(`{"holder":"z_00000000","leaseDurationMillis":2000,"leaderTransitions":%d}`, i)
		if err := driver.PutContent(t.Context(), "/cluster/leader", []byte(other)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(retry / 2)
	}
	if r.leading.Load() {
		t.Fatal("still leading a lease that another holder renews")
	}
	_, ended := r.times()
	t.Logf("stopped %s after another holder started renewing", ended.Sub(zStarted).Round(time.Millisecond))
	theLeader(t, 5*lease, r)
	if started, _ := r.times(); started.Sub(zLast) < lease {
		t.Fatalf("led again %s after the other holder's last renewal, before its lease expired", started.Sub(zLast))
	}
	if c := r.changes(); c != 2 {
		t.Fatalf("pullbroker_leader_changes_total = %v, want 2 (to z and back)", c)
	}
}

// A lease object that is not a lease is not taken for a free lease: it is
// taken over once it stayed unchanged for leaseDuration.
func TestStorageUnreadableLeaseWaitsForExpiry(t *testing.T) {
	const lease = 2 * time.Second
	cfg := storageCluster(lease, time.Second, 200*time.Millisecond)
	driver := filesystemDriver(t)
	if err := driver.PutContent(t.Context(), "/cluster/leader", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := startReplica(t, &leaders{}, "a", cfg, driver)
	theLeader(t, 5*lease, r)
	if started, _ := r.times(); started.Sub(start) < lease {
		t.Fatalf("led %s after start, before the unreadable lease expired", started.Sub(start))
	}
}

func TestNewRefusesIncompleteOptions(t *testing.T) {
	cfg := storageCluster(15*time.Second, 10*time.Second, 2*time.Second)
	if _, err := leader.New(cfg, leader.Options{Driver: filesystemDriver(t)}); err == nil || !strings.Contains(err.Error(), "cluster.name") {
		t.Fatalf("no name: %v", err)
	}
	cfg.Name = "a"
	if _, err := leader.New(cfg, leader.Options{}); err == nil || !strings.Contains(err.Error(), "storage driver") {
		t.Fatalf("no driver: %v", err)
	}
}

// testLogger logs through t, so that a failure shows each replica's view;
// lines logged after the test's replicas stopped are dropped.
func testLogger(t *testing.T, name string) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", name)
}

type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}
