//go:build linux || darwin

package cache

import (
	"syscall"
	"unsafe"
)

// The index's tables live outside the Go heap, in anonymous mappings.
// On the heap, a million blobs' 70 MB of tables would count towards the
// garbage collector's goal, which lets the heap grow to twice what is
// live: every walk, request and journal merge would then leave up to
// another 70 MB of garbage before a collection, and the process's peak
// resident memory would be about twice the index. Outside it, the heap
// holds only the process's own small working set, and the tables cost
// their size once. shaSlot holds no pointers, so the collector need not
// see them.

const shaSlotBytes = int(unsafe.Sizeof(shaSlot{}))

// allocSlots returns n zeroed slots outside the Go heap (on the heap if
// the system refuses the mapping).
func allocSlots(n int) []shaSlot {
	mem, err := syscall.Mmap(-1, 0, n*shaSlotBytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]shaSlot, n)
	}
	return unsafe.Slice((*shaSlot)(unsafe.Pointer(unsafe.SliceData(mem))), n)
}

// freeSlots returns slots from allocSlots to the system; nothing may use
// them afterwards. Slots allocSlots took from the heap are not a mapping
// syscall knows, and are left to the collector.
func freeSlots(slots []shaSlot) {
	if len(slots) == 0 {
		return
	}
	_ = syscall.Munmap(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(slots))), len(slots)*shaSlotBytes))
}
