package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestIndexStaysUnder100BytesPerBlob measures the heap the index takes
// per blob: a cache of a million blobs must fit in 64 MiB + 100 bytes a
// blob of RSS (issue 10).
func TestIndexStaysUnder100BytesPerBlob(t *testing.T) {
	const blobs = 200_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newBlobIndex()
	for i := range blobs {
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i))
		x.put(blobKey{sha256: sha256.Sum256(seed[:])}, blobEntry{size: int64(i), access: int64(i)})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perBlob := float64(after.HeapAlloc-before.HeapAlloc) / blobs
	t.Logf("index: %.1f bytes per blob at %d blobs", perBlob, blobs)
	if perBlob >= 100 {
		t.Errorf("index takes %.1f bytes per blob, want < 100", perBlob)
	}
	if x.len() != blobs {
		t.Fatalf("index holds %d blobs, want %d", x.len(), blobs)
	}
	runtime.KeepAlive(x)
}

func TestBlobKeys(t *testing.T) {
	x := newBlobIndex()
	sha := digest.FromString("a")
	other := digest.SHA512.FromString("b")
	for _, d := range []digest.Digest{sha, other} {
		k := keyOf(d)
		if k.digest() != d {
			t.Errorf("keyOf(%s).digest() = %s", d, k.digest())
		}
		x.put(k, blobEntry{size: 10})
	}
	if keyOf(sha).other != "" || keyOf(other).other != other {
		t.Errorf("sha256 not keyed by its bytes, or another algorithm by them")
	}
	if x.len() != 2 || x.bytes != 20 {
		t.Fatalf("index holds %d blobs of %d bytes, want 2 of 20", x.len(), x.bytes)
	}
	x.put(keyOf(sha), blobEntry{size: 5})
	x.remove(keyOf(other))
	x.remove(keyOf(other))
	if x.len() != 1 || x.bytes != 5 {
		t.Fatalf("after a replace and a removal: %d blobs of %d bytes, want 1 of 5", x.len(), x.bytes)
	}
}
