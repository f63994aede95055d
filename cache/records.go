package cache

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// recordCache keeps the small records of the storage (pins, tag records,
// links) in memory for a TTL, so that a pinned or fresh tag costs no
// storage request on object storage, where each costs a round trip and
// money. A record this Store writes or deletes is updated here at once;
// one another replica changes is seen here within the TTL: that is the
// documented staleness of storage.recordCacheTTL.
type recordCache struct {
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	records map[string]cachedRecord
}

// cachedRecord is a record's bytes, or its absence (nil).
type cachedRecord struct {
	content []byte
	expires time.Time
}

// maxCachedRecords bounds the map: past it, expired entries are dropped,
// and if that is not enough, all of them.
const maxCachedRecords = 200_000

func newRecordCache(ttl time.Duration) *recordCache {
	return &recordCache{ttl: ttl, now: time.Now, records: map[string]cachedRecord{}}
}

// get returns the record at p: found reports whether it exists, ok whether
// the cache knows.
func (c *recordCache) get(p string) (content []byte, found, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.records[p]
	if !ok || c.now().After(r.expires) {
		return nil, false, false
	}
	return r.content, r.content != nil, true
}

// set records p's content; nil records its absence.
func (c *recordCache) set(p string, content []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.records) >= maxCachedRecords {
		for k, r := range c.records {
			if now.After(r.expires) {
				delete(c.records, k)
			}
		}
		if len(c.records) >= maxCachedRecords {
			c.records = map[string]cachedRecord{}
		}
	}
	c.records[p] = cachedRecord{content: content, expires: now.Add(c.ttl)}
}

// manifestBodies keeps verified manifest bodies by digest. They never
// change, so they need no TTL, only a bound on the memory they take.
type manifestBodies struct {
	mu       sync.Mutex
	bodies   map[digest.Digest][]byte
	bytes    int
	maxBytes int
}

func newManifestBodies(maxBytes int) *manifestBodies {
	return &manifestBodies{bodies: map[digest.Digest][]byte{}, maxBytes: maxBytes}
}

func (m *manifestBodies) get(d digest.Digest) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.bodies[d]
	return b, ok
}

// add keeps a verified body; past the bound, it starts over rather than
// tracking recency, since the working set of manifests is small.
func (m *manifestBodies) add(d digest.Digest, body []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.bodies[d]; ok || len(body) > m.maxBytes {
		return
	}
	if m.bytes+len(body) > m.maxBytes {
		m.bodies, m.bytes = map[digest.Digest][]byte{}, 0
	}
	m.bodies[d] = body
	m.bytes += len(body)
}
