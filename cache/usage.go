package cache

import (
	"cmp"
	"context"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
)

// Usage accounting: the size and number of committed blobs (layers,
// configs and manifests), when each was last read, and the pins by policy.
//
// The index lives in memory. It is filled by a walk of storage that Start
// runs in the background, and kept current by this process's own commits,
// reads and deletions. Objects that another replica sharing the storage
// commits or deletes are seen at the next start only.

// defaultEvictMinIdle protects blobs read or committed this recently from
// eviction: a pull that just fetched a manifest is about to fetch its
// layers.
const defaultEvictMinIdle = time.Minute

// evictLowWater is the fraction of MaxSizeBytes that an eviction pass
// brings the cache down to, so that passes are not run for every commit.
const evictLowWater = 0.9

type blobEntry struct {
	size   int64
	access int64 // unix nanoseconds of the last read or commit
}

type usage struct {
	mu      sync.Mutex
	blobs   map[digest.Digest]blobEntry
	bytes   int64
	walking bool
	// changed holds digests committed or deleted while the walk runs: what
	// the walk finds for them is stale, the index is right.
	changed map[digest.Digest]struct{}

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
		blobs:     map[digest.Digest]blobEntry{},
		pins:      map[string]string{},
		pinCounts: map[string]int{},
		evict:     make(chan struct{}, 1),
	}
}

// Start runs the background work of a long-lived Store until ctx ends: the
// removal of temporary files a crash left under uploads/, a walk of
// storage that measures the cache (and counts pins) for the metrics, with
// Options.MaxSizeBytes eviction of the blobs least recently read, with
// Options.ScrubInterval the scrub, and with Options.GCInterval GC. Commands that only use the Store
// briefly need not call it.
func (s *Store) Start(ctx context.Context) {
	go s.sweepUploads(ctx)
	if s.scrubInterval > 0 {
		go every(ctx, s.scrubInterval, s.scrubOnce)
	}
	if s.gcInterval > 0 {
		go every(ctx, s.gcInterval, s.gcOnce)
	}
	go func() {
		defer close(s.scanned)
		start := time.Now()
		if err := s.walkBlobs(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("measuring the cache failed; size metrics count only what this process stores", "error", err)
		}
		if err := s.walkPins(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("counting pins failed; the pin metric counts only pins changed by this process", "error", err)
		}
		s.usage.mu.Lock()
		bytes, objects := s.usage.bytes, len(s.usage.blobs)
		s.usage.mu.Unlock()
		s.log.Info("cache measured", "bytes", bytes, "objects", objects, "took", time.Since(start).Round(time.Millisecond))
		s.signalEvict()
	}()
	if s.maxSize > 0 {
		go s.evictLoop(ctx)
	}
}

// walkBlobs adds every committed blob in storage to the index.
func (s *Store) walkBlobs(ctx context.Context) error {
	u := s.usage
	u.mu.Lock()
	u.walking, u.changed = true, map[digest.Digest]struct{}{}
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.walking, u.changed = false, nil
		u.mu.Unlock()
	}()
	err := s.driver.Walk(ctx, "/blobs", func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if fi.IsDir() {
			return nil
		}
		dgst, ok := digestFromBlobPath(fi.Path())
		if !ok {
			return nil
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		if _, changed := u.changed[dgst]; changed {
			return nil
		}
		if _, known := u.blobs[dgst]; !known {
			u.blobs[dgst] = blobEntry{size: fi.Size(), access: fi.ModTime().UnixNano()}
			u.bytes += fi.Size()
			s.setSizeGauges()
		}
		return nil
	})
	if isPathNotFound(err) {
		return nil
	}
	return err
}

// digestFromBlobPath parses /blobs/<algorithm>/<xx>/<encoded>/data.
func digestFromBlobPath(p string) (digest.Digest, bool) {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(parts) != 5 || parts[0] != "blobs" || parts[4] != "data" {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[3])
	if d.Validate() != nil || blobPath(d) != p {
		return "", false
	}
	return d, true
}

// setSizeGauges publishes the totals; u.mu is held.
func (s *Store) setSizeGauges() {
	s.metrics.sizeBytes.Set(float64(s.usage.bytes))
	s.metrics.objects.Set(float64(len(s.usage.blobs)))
}

// accountCommit records a blob just committed under dgst.
func (s *Store) accountCommit(dgst digest.Digest, size int64) {
	u := s.usage
	u.mu.Lock()
	if u.walking {
		u.changed[dgst] = struct{}{}
	}
	if old, ok := u.blobs[dgst]; ok {
		u.bytes -= old.size
	}
	u.blobs[dgst] = blobEntry{size: size, access: time.Now().UnixNano()}
	u.bytes += size
	s.setSizeGauges()
	over := s.maxSize > 0 && u.bytes > s.maxSize
	u.mu.Unlock()
	if over {
		s.signalEvict()
	}
}

// accountDelete records that the blob dgst is gone from storage.
func (s *Store) accountDelete(dgst digest.Digest) {
	u := s.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.walking {
		u.changed[dgst] = struct{}{}
	}
	if old, ok := u.blobs[dgst]; ok {
		delete(u.blobs, dgst)
		u.bytes -= old.size
		s.setSizeGauges()
	}
}

// touch records a read of dgst, for eviction.
func (s *Store) touch(dgst digest.Digest) {
	u := s.usage
	u.mu.Lock()
	if e, ok := u.blobs[dgst]; ok {
		e.access = time.Now().UnixNano()
		u.blobs[dgst] = e
	}
	u.mu.Unlock()
}

func (s *Store) signalEvict() {
	select {
	case s.usage.evict <- struct{}{}:
	default:
	}
}

func (s *Store) evictLoop(ctx context.Context) {
	// Eviction needs the whole index; before the walk ends the cache
	// looks smaller than it is.
	select {
	case <-s.scanned:
	case <-ctx.Done():
		return
	}
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
// the low-water mark. It never deletes a blob read within evictMinIdle,
// nor one that a pin or Options.Roots reaches (see mark): a pinned or
// locked image stays whole, so it is served while its upstream is down.
// A blob being filled is not in the index yet, so it is never a candidate.
//
// Evicting a manifest needs nothing more: the config and layers that only
// it referenced are now reached by no root either, so they are ordinary
// candidates, taken in their own least-recently-read order.
func (s *Store) evictOnce(ctx context.Context) {
	u := s.usage
	u.evictMu.Lock()
	defer u.evictMu.Unlock()
	u.mu.Lock()
	over := u.bytes > s.maxSize
	u.mu.Unlock()
	if !over {
		return
	}
	protected, err := s.protected(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("not evicting: the pinned and locked images could not be listed, so nothing is known to be safe to delete", "error", err)
		}
		return
	}

	u.mu.Lock()
	target := int64(float64(s.maxSize) * evictLowWater)
	idleBefore := time.Now().Add(-s.evictMinIdle).UnixNano()
	type candidate struct {
		dgst digest.Digest
		blobEntry
	}
	var all []candidate
	var protectedBytes int64
	for d, e := range u.blobs {
		switch {
		case protected[d]:
			protectedBytes += e.size
		case e.access < idleBefore:
			all = append(all, candidate{d, e})
		}
	}
	excess := u.bytes - target
	u.mu.Unlock()

	slices.SortFunc(all, func(a, b candidate) int { return cmp.Compare(a.access, b.access) })
	var freed int64
	for _, c := range all {
		if freed >= excess || ctx.Err() != nil {
			break
		}
		u.mu.Lock()
		cur, ok := u.blobs[c.dgst]
		u.mu.Unlock()
		if !ok || cur.access != c.access {
			continue // read (or deleted) since the candidates were picked
		}
		if gone, _ := s.removeBlob(ctx, c.dgst, c.size, reasonSize); gone {
			freed += c.size
		}
	}
	if freed < excess {
		u.mu.Lock()
		over := u.bytes - s.maxSize
		u.mu.Unlock()
		if over > 0 && time.Since(u.overWarned) > 10*time.Minute {
			u.overWarned = time.Now()
			s.log.Warn("cache is over storage.maxSizeBytes: the rest is pinned, locked or was read too recently to evict",
				"overBytes", over, "pinnedBytes", protectedBytes, "minIdle", s.evictMinIdle)
		}
	}
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
