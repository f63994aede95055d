package cache

import (
	"cmp"
	"container/heap"
	"context"
	"path"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

// Usage accounting: the size and number of committed blobs (layers,
// configs and manifests), when each was last read, and the pins by policy.
//
// Several replicas may share one storage. Each records the blobs it reads,
// commits and deletes in its journal (journal.go), which reaches storage
// once per Options.AccountingInterval. The leader (the replica running
// Lead) alone holds the index of every blob: it walks storage when it
// starts leading, merges the journals of all replicas into the index each
// interval, publishes the cluster's totals under cluster/usage, and evicts,
// scrubs and collects for the whole cluster. The other replicas read the
// published totals for their size metrics, so all report the same size.

// defaultEvictMinIdle protects blobs read or committed this recently from
// eviction: a pull that just fetched a manifest is about to fetch its
// layers. New raises it to evictMinIdleIntervals accounting intervals when
// that is longer.
const defaultEvictMinIdle = time.Minute

// evictMinIdleIntervals: a read on another replica reaches the leader's
// index within two accounting intervals (one until that replica's journal
// is written, one until the leader merges it), so a blob read on any
// replica at least once every evictMinIdle minus two intervals is never
// evicted; the third interval is the margin.
const evictMinIdleIntervals = 3

// evictLowWater is the fraction of MaxSizeBytes that an eviction pass
// brings the cache down to, so that passes are not run for every commit.
const evictLowWater = 0.9

type usage struct {
	mu sync.Mutex
	// index is nil unless this replica leads.
	index *blobIndex
	// indexed is closed when the leader's walk of storage ended.
	indexed chan struct{}
	walking bool
	// changed holds blobs committed or deleted while the walk runs: what
	// the walk finds for them is stale, the index is right.
	changed map[blobKey]struct{}
	// published is what the leader last wrote to cluster/usage.
	published clusterUsage

	pins        map[string]string // "registry/repository:tag" -> policy label
	pinCounts   map[string]int
	pinsWalking bool
	pinsChanged map[string]struct{}

	// evict is signalled when the cache may be over its limit.
	evict chan struct{}
	// evictMu serializes eviction passes; overWarned, under it, is when
	// a pass last logged that it could not get under the limit.
	evictMu    sync.Mutex
	overWarned time.Time
}

func newUsage() *usage {
	return &usage{
		pins:      map[string]string{},
		pinCounts: map[string]int{},
		evict:     make(chan struct{}, 1),
	}
}

// Start runs what every replica runs until ctx ends: the removal of
// temporary files a crash left under uploads/, the count of pins for the
// metrics, and every Options.AccountingInterval the write of this
// replica's journal and, unless it leads, the read of the cluster's cache
// size for its metrics. Commands that only use the Store briefly need not
// call it.
func (s *Store) Start(ctx context.Context) {
	go s.sweepUploads(ctx)
	go func() {
		if err := s.walkPins(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("counting pins failed; the pin metric counts only pins changed by this process", "error", err)
		}
	}()
	s.sharing.Go(func() {
		s.readClusterUsage(ctx)
		every(ctx, s.accountingInterval, func(ctx context.Context) {
			if err := s.flushJournal(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("writing this replica's journal of reads and commits failed; retrying with the next interval's", "error", err)
			}
			s.readClusterUsage(ctx)
		})
	})
}

// Lead runs, until ctx ends, what one replica of those sharing the storage
// runs for all (leader election decides which; one Lead at a time): a walk of storage that builds the
// index of every blob, then every Options.AccountingInterval the merge of
// the replicas' journals and the publication of the cluster's cache size;
// with Options.MaxSizeBytes eviction of the blobs least recently read,
// with Options.ScrubInterval the scrub, and with Options.GCInterval GC.
// When ctx ends it stops all of that and drops the index before
// returning. Run it alongside Start.
func (s *Store) Lead(ctx context.Context) {
	u := s.usage
	indexed := make(chan struct{})
	u.mu.Lock()
	u.index, u.indexed, u.published = newBlobIndex(), indexed, clusterUsage{}
	u.mu.Unlock()
	var work sync.WaitGroup
	defer func() {
		work.Wait()
		u.mu.Lock()
		u.index.release()
		u.index = nil
		u.mu.Unlock()
	}()

	start := time.Now()
	if err := s.walkBlobs(ctx); err != nil {
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("measuring the cache failed; the index holds only what was found and what replicas report", "error", err)
	}
	u.mu.Lock()
	bytes, objects := u.index.bytes, u.index.len()
	u.mu.Unlock()
	s.log.Info("cache measured", "bytes", bytes, "objects", objects, "took", time.Since(start).Round(time.Millisecond))
	close(indexed)

	s.mergeJournals(ctx)
	if s.scrubInterval > 0 {
		work.Go(func() { every(ctx, s.scrubInterval, s.scrubOnce) })
	}
	if s.gcInterval > 0 {
		work.Go(func() { every(ctx, s.gcInterval, s.gcOnce) })
	}
	if s.maxSize > 0 {
		s.signalEvict() // the walk may have found the cache over the limit
		work.Go(func() { s.evictLoop(ctx) })
	}
	every(ctx, s.accountingInterval, s.mergeJournals)
}

// walkGCPercent is the garbage collector's target while the leader walks
// object storage: each listing page of a thousand keys is decoded into
// about 6.5 MB of garbage (the SDK's XML), far more than the index the
// walk keeps (which lives outside the heap), and objectWalkers pages are
// decoded at once. Measured on a million blobs in versitygw (bench (8)):
// peak RSS 172, 162 and 155-156 MiB at 50, 25 and 10, for a walk of 38,
// 42 and 53-55 s; the extra CPU is spent during that one walk.
const walkGCPercent = 10

// walkBlobs adds every committed blob in storage to the index.
func (s *Store) walkBlobs(ctx context.Context) error {
	if s.localRoot == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(walkGCPercent))
	}
	u := s.usage
	u.mu.Lock()
	u.walking, u.changed = true, map[blobKey]struct{}{}
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.walking, u.changed = false, nil
		u.mu.Unlock()
	}()
	return s.walkStoredBlobs(ctx, func(b storedBlob) error {
		u.mu.Lock()
		defer u.mu.Unlock()
		if _, changed := u.changed[b.key]; changed {
			return nil
		}
		if _, known := u.index.get(b.key); !known {
			u.index.put(b.key, blobEntry{size: b.size, access: b.modTime.UnixNano()})
			s.setSizeGauges()
		}
		return nil
	})
}

// setSizeGauges publishes the index's totals; u.mu is held and the index
// is live.
func (s *Store) setSizeGauges() {
	s.metrics.sizeBytes.Set(float64(s.usage.index.bytes))
	s.metrics.objects.Set(float64(s.usage.index.len()))
}

// accountCommit records a blob just committed under dgst.
func (s *Store) accountCommit(dgst digest.Digest, size int64) {
	s.account(dgst, journalEvent{Op: opCommit, Size: size, At: time.Now().UnixNano()})
}

// accountDelete records that the blob dgst is gone from storage.
func (s *Store) accountDelete(dgst digest.Digest) {
	s.account(dgst, journalEvent{Op: opDelete, At: time.Now().UnixNano()})
}

// touch records a read of dgst, for eviction.
func (s *Store) touch(dgst digest.Digest) {
	s.account(dgst, journalEvent{Op: opRead, At: time.Now().UnixNano()})
}

// account records ev in the journal and, when this replica leads, in the
// index at once.
func (s *Store) account(dgst digest.Digest, ev journalEvent) {
	s.journal.record(dgst, ev)
	s.usage.mu.Lock()
	over := s.applyLocked(keyOf(dgst), ev)
	s.usage.mu.Unlock()
	if over {
		s.signalEvict()
	}
}

// applyLocked brings the index up to date with ev, when there is an index;
// over reports that the cache is now over its limit. u.mu is held.
//
// Journals of several replicas arrive in any order and may be merged twice
// (by a leader that died before deleting them, then by the next), so
// applying an event is idempotent and keeps the latest access.
func (s *Store) applyLocked(k blobKey, ev journalEvent) (over bool) {
	u := s.usage
	if u.index == nil {
		return false
	}
	e, known := u.index.get(k)
	switch ev.Op {
	case opCommit:
		if ev.Size < 0 {
			return false // not from this package's journals
		}
		if u.walking {
			u.changed[k] = struct{}{}
		}
		u.index.put(k, blobEntry{size: ev.Size, access: max(e.access, ev.At)})
	case opRead:
		// A blob unknown to the index was deleted since, or its commit is
		// in a journal not merged yet, which brings the size.
		if known && ev.At > e.access {
			e.access = ev.At
			u.index.put(k, e)
		}
	case opDelete:
		if u.walking {
			u.changed[k] = struct{}{}
		}
		// Committed or read again after this deletion: it is stored.
		if known && e.access <= ev.At {
			u.index.remove(k)
		}
	}
	s.setSizeGauges()
	return s.maxSize > 0 && u.index.bytes > s.maxSize
}

func (s *Store) signalEvict() {
	select {
	case s.usage.evict <- struct{}{}:
	default:
	}
}

func (s *Store) evictLoop(ctx context.Context) {
	// Blobs protected by evictMinIdle become evictable later without any
	// commit to signal it.
	tick := time.NewTicker(max(s.evictMinIdle/2, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.usage.evict:
		case <-tick.C:
		}
		s.evictOnce(ctx)
	}
}

// evictOnce deletes the blobs read least recently until the cache is at
// the low-water mark. It never deletes a blob read within evictMinIdle
// (on any replica: see evictMinIdleIntervals), nor one that a pin or
// Options.Roots reaches (see mark): a pinned or locked image stays whole,
// so it is served while its upstream is down. A blob being filled is not
// in the index yet, so it is never a candidate; one being read is
// reported as read by every journal written during the read.
//
// Evicting a manifest needs nothing more: the config and layers that only
// it referenced are now reached by no root either, so they are ordinary
// candidates, taken in their own least-recently-read order.
func (s *Store) evictOnce(ctx context.Context) {
	u := s.usage
	u.evictMu.Lock()
	defer u.evictMu.Unlock()
	u.mu.Lock()
	over := u.index != nil && u.index.bytes > s.maxSize
	u.mu.Unlock()
	if !over {
		return
	}
	protectedDigests, err := s.protected(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("not evicting: the pinned and locked images could not be listed, so nothing is known to be safe to delete", "error", err)
		}
		return
	}
	protected := make(map[blobKey]bool, len(protectedDigests))
	for d := range protectedDigests {
		protected[keyOf(d)] = true
	}

	u.mu.Lock()
	if u.index == nil {
		u.mu.Unlock()
		return
	}
	target := int64(float64(s.maxSize) * evictLowWater)
	excess := u.index.bytes - target
	idleBefore := time.Now().Add(-s.evictMinIdle).UnixNano()
	var protectedBytes int64
	oldest := oldestCovering{excess: excess}
	u.index.each(func(k blobKey, e blobEntry) {
		switch {
		case protected[k]:
			protectedBytes += e.size
		case e.access < idleBefore:
			oldest.offer(evictCandidate{k, e})
		}
	})
	u.mu.Unlock()

	var freed int64
	for _, c := range oldest.sorted() {
		if freed >= excess || ctx.Err() != nil {
			break
		}
		u.mu.Lock()
		cur, ok := blobEntry{}, false
		if u.index != nil {
			cur, ok = u.index.get(c.key)
		}
		u.mu.Unlock()
		if !ok || cur.access != c.access {
			continue // read (or deleted) since the candidates were picked
		}
		if gone, _ := s.removeBlob(ctx, c.key.digest(), c.size, reasonSize); gone {
			freed += c.size
		}
	}
	if freed < excess {
		u.mu.Lock()
		over := int64(0)
		if u.index != nil {
			over = u.index.bytes - s.maxSize
		}
		u.mu.Unlock()
		if over > 0 && time.Since(u.overWarned) > 10*time.Minute {
			u.overWarned = time.Now()
			s.log.Warn("cache is over storage.maxSizeBytes: the rest is pinned, locked or was read too recently to evict",
				"overBytes", over, "pinnedBytes", protectedBytes, "minIdle", s.evictMinIdle)
		}
	}
}

type evictCandidate struct {
	key blobKey
	blobEntry
}

// oldestCovering keeps, of the candidates offered, the fewest read longest
// ago whose sizes add up to excess: a pass over a million blobs holds only
// what it may evict. It is a heap with the most recently read on top.
type oldestCovering struct {
	excess int64
	bytes  int64
	heap   []evictCandidate
}

func (o *oldestCovering) Len() int           { return len(o.heap) }
func (o *oldestCovering) Less(i, j int) bool { return o.heap[i].access > o.heap[j].access }
func (o *oldestCovering) Swap(i, j int)      { o.heap[i], o.heap[j] = o.heap[j], o.heap[i] }
func (o *oldestCovering) Push(x any)         { o.heap = append(o.heap, x.(evictCandidate)) }
func (o *oldestCovering) Pop() any {
	last := o.heap[len(o.heap)-1]
	o.heap = o.heap[:len(o.heap)-1]
	return last
}

func (o *oldestCovering) offer(c evictCandidate) {
	if o.bytes >= o.excess && len(o.heap) > 0 && c.access >= o.heap[0].access {
		return // enough is kept, all read longer ago
	}
	heap.Push(o, c)
	o.bytes += c.size
	for len(o.heap) > 1 && o.bytes-o.heap[0].size >= o.excess {
		o.bytes -= heap.Pop(o).(evictCandidate).size
	}
}

// sorted is the candidates kept, read longest ago first.
func (o *oldestCovering) sorted() []evictCandidate {
	slices.SortFunc(o.heap, func(a, b evictCandidate) int { return cmp.Compare(a.access, b.access) })
	return o.heap
}

// protected is every digest a pin or Options.Roots reaches.
func (s *Store) protected(ctx context.Context) (map[digest.Digest]bool, error) {
	roots, err := s.protectedRoots(ctx)
	if err != nil {
		return nil, err
	}
	marked := map[digest.Digest]bool{}
	if err := s.mark(ctx, roots, marked); err != nil {
		return nil, err
	}
	return marked, nil
}

// Why a blob was removed, as the eviction metrics label it.
const (
	reasonSize = "size" // storage.maxSizeBytes
	reasonGC   = "gc"   // unreferenced, by GC
)

// removeBlob deletes a committed blob and counts it under reason. gone
// reports that the blob is no longer stored; removed, that this call
// removed it (it may have been gone already).
func (s *Store) removeBlob(ctx context.Context, dgst digest.Digest, size int64, reason string) (gone, removed bool) {
	// The directory holds only this blob's data file.
	err := s.driver.Delete(ctx, path.Dir(blobPath(dgst)))
	if err != nil && !isPathNotFound(err) {
		s.log.Warn("removing a blob failed", "digest", dgst, "reason", reason, "error", err)
		return false, false
	}
	s.accountDelete(dgst)
	if err != nil {
		return true, false
	}
	s.metrics.evictions.WithLabelValues(reason).Inc()
	s.metrics.evictedBytes.WithLabelValues(reason).Add(float64(size))
	return true, true
}

// Pin accounting. Policies are label values, so only known ones are kept
// as they are.
func pinPolicyLabel(policy string) string {
	switch policy {
	case config.PolicySticky, config.PolicyManual, config.PolicyLocked, config.PolicyTTL:
		return policy
	}
	return "other"
}

func (s *Store) walkPins(ctx context.Context) error {
	u := s.usage
	u.mu.Lock()
	u.pinsWalking, u.pinsChanged = true, map[string]struct{}{}
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.pinsWalking, u.pinsChanged = false, nil
		u.mu.Unlock()
	}()
	pins, err := s.Pins(ctx)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range pins {
		if _, changed := u.pinsChanged[p.Image()]; !changed {
			s.setPinLocked(p.Image(), pinPolicyLabel(p.Policy))
		}
	}
	return nil
}

// accountPin records that the pin key now has policy ("" when deleted).
func (s *Store) accountPin(key, policy string) {
	u := s.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.pinsWalking {
		u.pinsChanged[key] = struct{}{}
	}
	if policy != "" {
		policy = pinPolicyLabel(policy)
	}
	s.setPinLocked(key, policy)
}

// setPinLocked updates one pin and the gauge of each policy it touches;
// u.mu is held.
func (s *Store) setPinLocked(key, policy string) {
	u := s.usage
	if old, ok := u.pins[key]; ok {
		u.pinCounts[old]--
		s.metrics.pins.WithLabelValues(old).Set(float64(u.pinCounts[old]))
		delete(u.pins, key)
	}
	if policy != "" {
		u.pins[key] = policy
		u.pinCounts[policy]++
		s.metrics.pins.WithLabelValues(policy).Set(float64(u.pinCounts[policy]))
	}
}
