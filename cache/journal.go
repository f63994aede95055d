package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// The journal: what a replica read, committed and deleted, batched in
// memory and written to storage once per accounting interval as one
// object, whatever the traffic, for the leader to merge into its index.
// A read costs no storage request; a replica's journal objects cost one
// write per interval in which it did anything.

// Storage paths of the cluster's shared accounting.
const (
	journalRoot      = "/cluster/journal" // journalRoot/<replica>/<seq>
	clusterUsagePath = "/cluster/usage"
)

// replicaName is what a replica name may be: one path component of every
// storage driver.
var replicaName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// What happened to a blob, as a journal records it.
const (
	opRead   = "read"
	opCommit = "commit"
	opDelete = "delete"
)

// journalEvent is the latest thing that happened to one blob in a batch.
type journalEvent struct {
	Op string `json:"op"`
	// Size is the committed size (opCommit only).
	Size int64 `json:"size,omitempty"`
	// At is when, in unix nanoseconds; for a read still in progress when
	// the batch was taken, that moment.
	At int64 `json:"at"`
}

// journalObject is one journal object in storage.
type journalObject struct {
	Replica string                         `json:"replica"`
	Blobs   map[digest.Digest]journalEvent `json:"blobs"`
}

// then is what a batch keeps of ev followed by later: the latest event,
// except that a read after a commit keeps the commit's size.
func (ev journalEvent) then(later journalEvent) journalEvent {
	if later.Op == opRead && ev.Op == opCommit {
		ev.At = max(ev.At, later.At)
		return ev
	}
	return later
}

type journal struct {
	mu     sync.Mutex
	events map[digest.Digest]journalEvent
	// reading counts the reads of each blob in progress: every batch
	// taken during a read reports it as read then, so that a long read is
	// never evicted under its reader.
	reading map[digest.Digest]int
}

func newJournal() *journal {
	return &journal{events: map[digest.Digest]journalEvent{}, reading: map[digest.Digest]int{}}
}

func (j *journal) record(d digest.Digest, ev journalEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if old, ok := j.events[d]; ok {
		ev = old.then(ev)
	}
	j.events[d] = ev
}

// beginRead and endRead bracket a read of a blob.
func (j *journal) beginRead(d digest.Digest) {
	j.mu.Lock()
	j.reading[d]++
	j.mu.Unlock()
}

func (j *journal) endRead(d digest.Digest) {
	j.mu.Lock()
	if j.reading[d]--; j.reading[d] <= 0 {
		delete(j.reading, d)
	}
	j.mu.Unlock()
}

// take returns the batch recorded since the last take, with the reads in
// progress as reads at now, and starts a new one.
func (j *journal) take(now time.Time) map[digest.Digest]journalEvent {
	j.mu.Lock()
	defer j.mu.Unlock()
	batch := j.events
	for d := range j.reading {
		read := journalEvent{Op: opRead, At: now.UnixNano()}
		if old, ok := batch[d]; ok {
			read = old.then(read)
		}
		batch[d] = read
	}
	j.events = map[digest.Digest]journalEvent{}
	return batch
}

// restore puts back a batch that could not be written, before what was
// recorded since.
func (j *journal) restore(batch map[digest.Digest]journalEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for d, ev := range batch {
		if later, ok := j.events[d]; ok {
			ev = ev.then(later)
		}
		j.events[d] = ev
	}
}

// Flush writes what this Store recorded since the last write (the blobs
// it read, committed and deleted) to storage for the leader now, instead
// of at Start's next interval. Commands that change the cache without
// Start (gc, verify) call it before they exit, so that the leader's
// cache size drops by what they removed.
func (s *Store) Flush(ctx context.Context) error {
	if err := s.flushJournal(ctx); err != nil {
		return fmt.Errorf("telling the leader what this process changed in the cache (%s): %w", journalRoot, err)
	}
	return nil
}

// flushJournal writes what this replica recorded since the last write as
// one journal object; the leader applies it to its index directly. A
// batch that could not be written is kept for the next write.
func (s *Store) flushJournal(ctx context.Context) error {
	batch := s.journal.take(time.Now())
	if len(batch) == 0 {
		return nil
	}
	u := s.usage
	u.mu.Lock()
	leading := u.index != nil
	over := false
	if leading {
		for d, ev := range batch {
			over = s.applyLocked(keyOf(d), ev) || over
		}
	}
	u.mu.Unlock()
	if leading {
		if over {
			s.signalEvict()
		}
		return nil
	}
	if err := ctx.Err(); err != nil {
		s.journal.restore(batch)
		return err
	}
	body, err := json.Marshal(journalObject{Replica: s.replica, Blobs: batch})
	if err == nil {
		p := path.Join(journalRoot, s.replica, fmt.Sprintf("%020d", time.Now().UnixNano()))
		err = s.putAtomic(ctx, p, body)
	}
	if err != nil {
		s.journal.restore(batch)
	}
	return err
}

// mergeJournals applies every replica's journal objects to the index, in
// the order each replica wrote them, deletes them, and publishes the
// cluster's totals when they changed. A journal that cannot be parsed is
// logged and deleted: what it recorded is lost to eviction order only.
func (s *Store) mergeJournals(ctx context.Context) {
	if err := s.mergeJournalObjects(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("merging the replicas' journals failed; retrying next interval", "error", err)
	}
	if err := s.publishClusterUsage(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("publishing the cache size for the other replicas failed; retrying next interval", "error", err)
	}
}

func (s *Store) mergeJournalObjects(ctx context.Context) error {
	replicas, err := s.driver.List(ctx, journalRoot)
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", journalRoot, err)
	}
	for _, dir := range replicas {
		objects, err := s.driver.List(ctx, dir)
		if isPathNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("listing %s: %w", dir, err)
		}
		slices.Sort(objects)
		for _, p := range objects {
			if err := s.mergeJournalObject(ctx, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) mergeJournalObject(ctx context.Context, p string) error {
	body, err := s.driver.GetContent(ctx, p)
	if isPathNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", p, err)
	}
	var j journalObject
	if err := json.Unmarshal(body, &j); err != nil {
		s.log.Warn("removing a journal object that is not valid JSON", "path", p, "error", err)
	} else {
		u := s.usage
		u.mu.Lock()
		if u.index == nil {
			u.mu.Unlock()
			return nil // no longer leading: the next leader merges it
		}
		over := false
		for d, ev := range j.Blobs {
			if d.Validate() == nil {
				over = s.applyLocked(keyOf(d), ev) || over
			}
		}
		u.mu.Unlock()
		if over {
			s.signalEvict()
		}
	}
	if err := s.driver.Delete(ctx, p); err != nil && !isPathNotFound(err) {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	return nil
}

// clusterUsage is cluster/usage: the cache's totals as the leader's index
// has them.
type clusterUsage struct {
	Bytes   int64     `json:"bytes"`
	Objects int       `json:"objects"`
	When    time.Time `json:"when"`
	Leader  string    `json:"leader"`
}

// publishClusterUsage writes cluster/usage when the totals changed since
// the last write.
func (s *Store) publishClusterUsage(ctx context.Context) error {
	u := s.usage
	u.mu.Lock()
	if u.index == nil {
		u.mu.Unlock()
		return nil
	}
	now := clusterUsage{Bytes: u.index.bytes, Objects: u.index.len(), Leader: s.replica}
	unchanged := u.published.Bytes == now.Bytes && u.published.Objects == now.Objects && u.published.Leader != ""
	u.mu.Unlock()
	if unchanged {
		return nil
	}
	now.When = time.Now().UTC()
	body, err := json.Marshal(now)
	if err != nil {
		return err
	}
	if err := s.putAtomic(ctx, clusterUsagePath, body); err != nil {
		return err
	}
	u.mu.Lock()
	u.published = now
	u.mu.Unlock()
	return nil
}

// readClusterUsage sets the size metrics of a replica that does not lead
// from what the leader published.
func (s *Store) readClusterUsage(ctx context.Context) {
	body, err := s.driver.GetContent(ctx, clusterUsagePath)
	if isPathNotFound(err) {
		return // no leader has measured the cache yet
	}
	var cu clusterUsage
	if err == nil {
		err = json.Unmarshal(body, &cu)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reading the cache size the leader publishes failed; the size metrics keep their last value", "path", clusterUsagePath, "error", err)
		}
		return
	}
	u := s.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.index == nil {
		s.metrics.sizeBytes.Set(float64(cu.Bytes))
		s.metrics.objects.Set(float64(cu.Objects))
	}
}
