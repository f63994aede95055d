//go:build !linux && !darwin

package cache

// allocSlots returns n zeroed slots; elsewhere than Linux and macOS they
// are on the Go heap (see index_mem_mmap.go).
func allocSlots(n int) []shaSlot { return make([]shaSlot, n) }

// freeSlots leaves slots to the garbage collector.
func freeSlots([]shaSlot) {}
