package cache

import (
	"encoding/hex"

	"github.com/opencontainers/go-digest"
)

// blobIndex is the leader's index of the committed blobs: the size of each
// and when it was last read or committed. It is kept compact, since it has
// an entry per blob in the cache (a million and more): sha256 digests,
// nearly all of them, are keyed by their 32 bytes rather than by their
// 71-character string; other algorithms take the plain map.
type blobIndex struct {
	sha256 map[[32]byte]blobEntry
	other  map[digest.Digest]blobEntry
	bytes  int64
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
	return &blobIndex{sha256: map[[32]byte]blobEntry{}, other: map[digest.Digest]blobEntry{}}
}

func (x *blobIndex) get(k blobKey) (blobEntry, bool) {
	if k.other != "" {
		e, ok := x.other[k.other]
		return e, ok
	}
	e, ok := x.sha256[k.sha256]
	return e, ok
}

// put adds or replaces the entry of k.
func (x *blobIndex) put(k blobKey, e blobEntry) {
	if old, ok := x.get(k); ok {
		x.bytes -= old.size
	}
	x.bytes += e.size
	if k.other != "" {
		x.other[k.other] = e
	} else {
		x.sha256[k.sha256] = e
	}
}

func (x *blobIndex) remove(k blobKey) {
	old, ok := x.get(k)
	if !ok {
		return
	}
	x.bytes -= old.size
	if k.other != "" {
		delete(x.other, k.other)
	} else {
		delete(x.sha256, k.sha256)
	}
}

func (x *blobIndex) len() int { return len(x.sha256) + len(x.other) }

// each calls fn for every entry.
func (x *blobIndex) each(fn func(blobKey, blobEntry)) {
	for k, e := range x.sha256 {
		fn(blobKey{sha256: k}, e)
	}
	for d, e := range x.other {
		fn(blobKey{other: d}, e)
	}
}
