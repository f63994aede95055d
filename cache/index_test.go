package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestIndexStaysUnder100BytesPerBlob measures the resident memory the
// index takes per blob: a cache of a million blobs must fit in 64 MiB +
// 100 bytes a blob of RSS (issue 10). Its tables are outside the Go heap
// (allocSlots), so that they do not raise the collector's goal.
func TestIndexStaysUnder100BytesPerBlob(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("resident memory is read from /proc/self/statm")
	}
	const blobs = 200_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rssBefore := residentBytes(t)
	x := newBlobIndex()
	for i := range blobs {
		var seed [8]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i))
		x.put(blobKey{sha256: sha256.Sum256(seed[:])}, blobEntry{size: int64(i), access: int64(i)})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perBlob := float64(residentBytes(t)-rssBefore) / blobs
	heapPerBlob := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / blobs
	t.Logf("index: %.1f bytes of RSS per blob at %d blobs, %.1f of them on the Go heap", perBlob, blobs, heapPerBlob)
	if perBlob >= 100 {
		t.Errorf("index takes %.1f bytes per blob, want < 100", perBlob)
	}
	if heapPerBlob >= 10 {
		t.Errorf("index takes %.1f bytes per blob of the Go heap, want its tables outside it", heapPerBlob)
	}
	if x.len() != blobs {
		t.Fatalf("index holds %d blobs, want %d", x.len(), blobs)
	}
	x.release()
	if x.len() != 0 {
		t.Fatalf("released index holds %d blobs", x.len())
	}
}

// residentBytes is the process's resident memory.
func residentBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b))
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
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

// TestShaTableAgreesWithAMap puts and removes many digests, a few of them
// crowded into one run of slots, and checks every answer against a map.
func TestShaTableAgreesWithAMap(t *testing.T) {
	x := newBlobIndex()
	want := map[blobKey]blobEntry{}
	rnd := rand.New(rand.NewPCG(1, 2))
	key := func() blobKey {
		var k blobKey
		for i := range k.sha256 {
			k.sha256[i] = byte(rnd.IntN(256))
		}
		if rnd.IntN(4) == 0 { // the same table and home region
			k.sha256[0], k.sha256[8] = 7, 0
		}
		return k
	}
	var keys []blobKey
	for round := range 20_000 {
		switch op := rnd.IntN(10); {
		case op < 6 || len(keys) == 0:
			k := key()
			keys = append(keys, k)
			e := blobEntry{size: int64(rnd.IntN(1000)), access: int64(round)}
			x.put(k, e)
			want[k] = e
		case op < 7:
			k := keys[rnd.IntN(len(keys))]
			e := blobEntry{size: 0, access: int64(round)}
			x.put(k, e)
			want[k] = e
		default:
			i := rnd.IntN(len(keys))
			x.remove(keys[i])
			delete(want, keys[i])
			keys[i] = keys[len(keys)-1]
			keys = keys[:len(keys)-1]
		}
	}
	var bytes int64
	for k, e := range want {
		bytes += e.size
		if got, ok := x.get(k); !ok || got != e {
			t.Fatalf("get(%x) = %+v, %v; want %+v", k.sha256[:4], got, ok, e)
		}
	}
	seen := 0
	x.each(func(k blobKey, e blobEntry) {
		seen++
		if want[k] != e {
			t.Fatalf("each gave %x %+v, want %+v", k.sha256[:4], e, want[k])
		}
	})
	if seen != len(want) || x.len() != len(want) || x.bytes != bytes {
		t.Fatalf("index: %d entries (each %d), %d bytes; want %d, %d", x.len(), seen, x.bytes, len(want), bytes)
	}
	for range 1000 {
		if _, ok := x.get(key()); ok {
			t.Fatal("an absent digest was found")
		}
	}
}
