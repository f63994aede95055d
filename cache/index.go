package cache

import (
	"encoding/binary"
	"encoding/hex"
	"math/bits"

	"github.com/opencontainers/go-digest"
)

// blobIndex is the leader's index of the committed blobs: the size of each
// and when it was last read or committed. It has an entry per blob in the
// cache, a million and more, so it is kept compact: sha256 digests, nearly
// all of them, are stored as their 32 bytes in open-addressing tables
// (shaTable) that grow by a quarter at a time, about 60 to 75 bytes a
// blob; a Go map, whose tables double, costs up to 120 bytes a blob at a
// million. Other algorithms take a plain map.
type blobIndex struct {
	// sha256 is sharded by the digest's first byte, so that growing one
	// table copies a 256th of the index.
	sha256 [256]shaTable
	other  map[digest.Digest]blobEntry
	bytes  int64
	count  int
}

type blobEntry struct {
	size   int64
	access int64 // unix nanoseconds of the last read or commit
}

// blobKey is a digest as the index keys it: sha256 by its bytes, any other
// algorithm by its string.
type blobKey struct {
	sha256 [32]byte
	other  digest.Digest
}

func keyOf(d digest.Digest) blobKey {
	var k blobKey
	if d.Algorithm() == digest.SHA256 {
		if n, err := hex.Decode(k.sha256[:], []byte(d.Encoded())); err == nil && n == len(k.sha256) {
			return k
		}
	}
	return blobKey{other: d}
}

func (k blobKey) digest() digest.Digest {
	if k.other != "" {
		return k.other
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(k.sha256[:]))
}

func newBlobIndex() *blobIndex {
	return &blobIndex{other: map[digest.Digest]blobEntry{}}
}

func (x *blobIndex) get(k blobKey) (blobEntry, bool) {
	if k.other != "" {
		e, ok := x.other[k.other]
		return e, ok
	}
	return x.sha256[k.sha256[0]].get(&k.sha256)
}

// put adds or replaces the entry of k.
func (x *blobIndex) put(k blobKey, e blobEntry) {
	old, known := x.get(k)
	if known {
		x.bytes -= old.size
	} else {
		x.count++
	}
	x.bytes += e.size
	if k.other != "" {
		x.other[k.other] = e
	} else {
		x.sha256[k.sha256[0]].put(&k.sha256, e)
	}
}

func (x *blobIndex) remove(k blobKey) {
	old, ok := x.get(k)
	if !ok {
		return
	}
	x.bytes -= old.size
	x.count--
	if k.other != "" {
		delete(x.other, k.other)
	} else {
		x.sha256[k.sha256[0]].remove(&k.sha256)
	}
}

func (x *blobIndex) len() int { return x.count }

// release returns the memory of the index's tables (outside the Go heap,
// see allocSlots) and empties it. Call it when dropping the index.
func (x *blobIndex) release() {
	for i := range x.sha256 {
		x.sha256[i].release()
	}
	*x = *newBlobIndex()
}

// each calls fn for every entry; fn must not change the index.
func (x *blobIndex) each(fn func(blobKey, blobEntry)) {
	for i := range x.sha256 {
		for _, s := range x.sha256[i].slots {
			if s.used() {
				fn(blobKey{sha256: s.key}, s.entry())
			}
		}
	}
	for d, e := range x.other {
		fn(blobKey{other: d}, e)
	}
}

// shaTable is an open-addressing hash table with linear probing over
// sha256 digests. The digest is its own hash: bytes 1 to 8 (byte 0 picks
// the table) scaled to the table's length give a key's home slot. The
// table grows when more than maxLoad of its slots are used, by a quarter,
// so that between 64% and 80% of its slots are used; removals shift the
// following entries back instead of leaving tombstones.
type shaTable struct {
	slots []shaSlot
	used  int
}

// shaSlot must hold no pointers: the tables are outside the Go heap
// (allocSlots), where the garbage collector does not look.
type shaSlot struct {
	key [32]byte
	// sizePlus1 is the blob's size plus one; 0 marks a free slot.
	sizePlus1 int64
	access    int64
}

const (
	shaTableMinSlots = 8
	shaTableMaxLoad  = 0.8
)

func (s *shaSlot) used() bool       { return s.sizePlus1 != 0 }
func (s *shaSlot) entry() blobEntry { return blobEntry{size: s.sizePlus1 - 1, access: s.access} }

func (t *shaTable) home(k *[32]byte) int {
	hi, _ := bits.Mul64(binary.LittleEndian.Uint64(k[1:9]), uint64(len(t.slots)))
	return int(hi)
}

func (t *shaTable) next(i int) int {
	if i++; i == len(t.slots) {
		return 0
	}
	return i
}

// find returns the slot holding k, or the free slot where it belongs.
func (t *shaTable) find(k *[32]byte) (int, bool) {
	for i := t.home(k); ; i = t.next(i) {
		s := &t.slots[i]
		if !s.used() {
			return i, false
		}
		if s.key == *k {
			return i, true
		}
	}
}

func (t *shaTable) get(k *[32]byte) (blobEntry, bool) {
	if len(t.slots) == 0 {
		return blobEntry{}, false
	}
	i, ok := t.find(k)
	if !ok {
		return blobEntry{}, false
	}
	return t.slots[i].entry(), true
}

func (t *shaTable) put(k *[32]byte, e blobEntry) {
	if float64(t.used+1) > shaTableMaxLoad*float64(len(t.slots)) {
		t.grow(max(shaTableMinSlots, len(t.slots)+len(t.slots)/4))
	}
	i, ok := t.find(k)
	if !ok {
		t.used++
	}
	t.slots[i] = shaSlot{key: *k, sizePlus1: e.size + 1, access: e.access}
}

func (t *shaTable) grow(n int) {
	old := t.slots
	t.slots = allocSlots(n)
	for i := range old {
		if old[i].used() {
			j, _ := t.find(&old[i].key)
			t.slots[j] = old[i]
		}
	}
	freeSlots(old)
}

// release returns the table's memory; the table is empty afterwards.
func (t *shaTable) release() {
	freeSlots(t.slots)
	*t = shaTable{}
}

// remove frees k's slot and moves back each entry of the run after it that
// may take the slot (whose home is not between the freed slot and its
// own), so that every entry stays reachable from its home.
func (t *shaTable) remove(k *[32]byte) {
	if len(t.slots) == 0 {
		return
	}
	free, ok := t.find(k)
	if !ok {
		return
	}
	t.used--
	for j := t.next(free); t.slots[j].used(); j = t.next(j) {
		h := t.home(&t.slots[j].key)
		var stays bool // h lies in (free, j], cyclically
		if free <= j {
			stays = free < h && h <= j
		} else {
			stays = free < h || h <= j
		}
		if !stays {
			t.slots[free] = t.slots[j]
			free = j
		}
	}
	t.slots[free] = shaSlot{}
}
