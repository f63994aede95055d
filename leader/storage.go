package leader

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// leasePath is the lease object of the storage backend, under the driver's
// root beside blobs/, repos/ and uploads/.
const leasePath = "/cluster/leader"

// unreadableHolder stands for the holder of a lease object that does not
// parse: it is treated as held by someone, and taken over once it stayed
// unchanged for leaseDuration. No identity has parentheses.
const unreadableHolder = "(unreadable)"

// leaseRecord is the lease object of the storage backend.
type leaseRecord struct {
	// Holder is the identity of the leader; empty once released.
	Holder string `json:"holder"`
	// LeaseDurationMillis is how long after the others last saw the
	// object change they may take it over.
	LeaseDurationMillis int64 `json:"leaseDurationMillis"`
	// AcquireTime and RenewTime are the holder's wall clock, for people
	// reading the object; no replica compares them with its own clock.
	// RenewTime changes the object at every renewal, which is what the
	// other replicas watch.
	AcquireTime time.Time `json:"acquireTime"`
	RenewTime   time.Time `json:"renewTime"`
	// LeaderTransitions counts the changes of holder.
	LeaderTransitions int `json:"leaderTransitions"`
}

// storageLease is the election through a lease object in storage.
type storageLease struct {
	e      *Elector
	driver storagedriver.StorageDriver

	// observedRaw is the lease object as last read and observedAt when it
	// was first read so (this process's monotonic clock): the lease
	// expires leaseDuration after observedAt.
	observedRaw []byte
	observedAt  time.Time
	// failing is set while reading the lease fails, so that an outage is
	// logged once at warning level.
	failing bool
}

func (s *storageLease) run(ctx context.Context, lead func(context.Context)) {
	for {
		confirmed, ok := s.acquire(ctx)
		if !ok {
			return
		}
		endedOnItsOwn := s.lead(ctx, lead, confirmed)
		if ctx.Err() != nil {
			return
		}
		// Give the others a chance at the lease this replica just released.
		if endedOnItsOwn && !sleep(ctx, s.e.cfg.RetryPeriod) {
			return
		}
	}
}

// acquire tries every retryPeriod until this replica holds the lease, and
// returns the time its hold was last confirmed; false when ctx ended.
func (s *storageLease) acquire(ctx context.Context) (time.Time, bool) {
	for {
		if confirmed, ok := s.tryAcquire(ctx); ok {
			return confirmed, true
		}
		// Jittered like client-go, so that replicas started together do
		// not keep writing in step.
		period := s.e.cfg.RetryPeriod
		if !sleep(ctx, period+rand.N(period/5+1)) {
			return time.Time{}, false
		}
	}
}

func (s *storageLease) tryAcquire(ctx context.Context) (time.Time, bool) {
	rec, err := s.read(ctx)
	if err != nil {
		return time.Time{}, false
	}
	if s.heldByAnother(rec) {
		return time.Time{}, false
	}
	start := time.Now()
	next := leaseRecord{
		Holder:              s.e.identity,
		LeaseDurationMillis: s.e.cfg.LeaseDuration.Milliseconds(),
		AcquireTime:         start,
		RenewTime:           start,
		LeaderTransitions:   rec.LeaderTransitions,
	}
	if rec.Holder == s.e.identity {
		next.AcquireTime = rec.AcquireTime
	} else {
		next.LeaderTransitions++
	}
	if err := s.write(ctx, next); err != nil {
		if ctx.Err() == nil {
			s.e.log.Warn("could not write the lease to take it", "path", leasePath, "err", err)
		}
		return time.Time{}, false
	}
	// No compare-and-swap: a replica that saw the lease expired as this
	// one did may have written after it. Leading only if the object still
	// names this replica after a retryPeriod, plus as long as this write
	// took (a competitor's is likely as slow), leaves one winner unless a
	// competitor's write took longer than that to land (see the package
	// doc).
	if !sleep(ctx, s.e.cfg.RetryPeriod+time.Since(start)) {
		s.release(ctx)
		return time.Time{}, false
	}
	rec, err = s.read(ctx)
	if err != nil || rec.Holder != s.e.identity {
		return time.Time{}, false
	}
	return start, true
}

// heldByAnother reports whether rec names another holder that renewed it
// within its lease duration, as this replica saw it change.
func (s *storageLease) heldByAnother(rec leaseRecord) bool {
	if rec.Holder == "" || rec.Holder == s.e.identity {
		return false
	}
	d := time.Duration(rec.LeaseDurationMillis) * time.Millisecond
	if d <= 0 {
		d = s.e.cfg.LeaseDuration
	}
	return time.Since(s.observedAt) < d
}

// lead runs lead while renewing the lease every retryPeriod, and returns
// once lead returned. Leadership ends renewDeadline after the last
// confirmed renewal even while a storage call hangs, when another holder
// is seen, or when ctx ends; the lease is released unless it was lost.
// It reports whether lead returned on its own while still leading.
func (s *storageLease) lead(ctx context.Context, lead func(context.Context), confirmed time.Time) (endedOnItsOwn bool) {
	cfg := s.e.cfg
	// Not ended by ctx: renewals go on until lead has returned.
	t := newTenure(context.WithoutCancel(ctx), confirmed, cfg.RenewDeadline)
	defer t.stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.e.runLead(ctx, t.ctx, lead)
	}()
	// The first renewal at once: the hold was confirmed by a write made a
	// retryPeriod ago, before the read-back.
	next := time.NewTimer(0)
	defer next.Stop()
renewals:
	for {
		select {
		case <-done:
			break renewals
		case <-t.ctx.Done():
			<-done
			break renewals
		case <-next.C:
			next.Reset(cfg.RetryPeriod)
		}
		start := time.Now()
		holder, err := s.renew(t.ctx, start)
		switch {
		case err == nil:
			t.renewed(start)
		case errors.Is(err, errLost) && holder == "":
			s.e.log.Warn("the lease was emptied or removed by someone else")
			t.end()
		case errors.Is(err, errLost):
			s.e.log.Warn("another replica took the lease", "holder", holder)
			t.end()
		default:
			s.e.log.Warn("could not renew the lease; retrying until renewDeadline", "renewDeadline", cfg.RenewDeadline, "err", err)
		}
	}
	lost := t.ctx.Err() != nil
	t.stop()
	if !lost || ctx.Err() != nil {
		s.release(ctx)
	}
	return !lost && ctx.Err() == nil
}

var errLost = errors.New("the lease names another holder")

// renew writes the lease again with a new renew time, after checking that
// it still names this replica; it returns errLost and the holder if not.
func (s *storageLease) renew(ctx context.Context, now time.Time) (holder string, err error) {
	rec, err := s.read(ctx)
	if err != nil {
		return "", err
	}
	if rec.Holder != s.e.identity {
		return rec.Holder, errLost
	}
	rec.RenewTime = now
	rec.LeaseDurationMillis = s.e.cfg.LeaseDuration.Milliseconds()
	return "", s.write(ctx, rec)
}

// release empties the lease if it still names this replica, so that
// another replica takes it at its next attempt. It runs after ctx ended,
// bounded by renewDeadline.
func (s *storageLease) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.e.cfg.RenewDeadline)
	defer cancel()
	rec, err := s.read(ctx)
	if err == nil && rec.Holder != s.e.identity {
		return
	}
	if err == nil {
		rec.Holder = ""
		rec.RenewTime = time.Now()
		err = s.write(ctx, rec)
	}
	if err != nil {
		s.e.log.Warn("could not release the lease; another replica takes it over after leaseDuration", "leaseDuration", s.e.cfg.LeaseDuration, "err", err)
		return
	}
	s.e.log.Info("released the lease")
}

// read reads the lease object (a zero record when there is none) and
// notes when it changed.
func (s *storageLease) read(ctx context.Context) (leaseRecord, error) {
	raw, err := s.driver.GetContent(ctx, leasePath)
	if err != nil && !errors.As(err, new(storagedriver.PathNotFoundError)) {
		if !s.failing && ctx.Err() == nil {
			s.e.log.Warn("cannot read the lease", "path", leasePath, "err", err)
		}
		s.failing = true
		return leaseRecord{}, err
	}
	s.failing = false
	changed := !bytes.Equal(raw, s.observedRaw) || s.observedAt.IsZero()
	if changed {
		s.observedRaw = raw
		s.observedAt = time.Now()
	}
	var rec leaseRecord
	if raw == nil {
		return rec, nil
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		if changed {
			s.e.log.Warn("the lease object is not a lease; it is taken over once unchanged for leaseDuration", "path", leasePath, "err", err)
		}
		return leaseRecord{Holder: unreadableHolder}, nil
	}
	s.e.observe(rec.Holder)
	return rec, nil
}

func (s *storageLease) write(ctx context.Context, rec leaseRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := s.driver.PutContent(ctx, leasePath, b); err != nil {
		return fmt.Errorf("writing %s: %w", leasePath, err)
	}
	return nil
}
