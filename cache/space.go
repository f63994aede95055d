package cache

import (
	"errors"
	"syscall"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// fullBackoff is how long no fill is started after storage ran out of
// space: blobs are streamed uncached meanwhile, and the next fill after it
// finds out whether space is back.
const fullBackoff = 10 * time.Second

// freeSpaceReserve is left free by a fill on a local disk, for the small
// records (links, tags) written beside it.
const freeSpaceReserve = 1 << 20

// isNoSpace reports whether err says the disk or a quota is full. The
// storage driver wraps errors in a storagedriver.Error that does not
// unwrap.
func isNoSpace(err error) bool {
	var de storagedriver.Error
	if errors.As(err, &de) && de.Detail != nil && isNoSpace(de.Detail) {
		return true
	}
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func (s *Store) markFull() {
	s.fullUntil.Store(time.Now().Add(fullBackoff).UnixNano())
}

// recentlyFull reports whether storage ran out of space within fullBackoff.
func (s *Store) recentlyFull() bool {
	return time.Now().UnixNano() < s.fullUntil.Load()
}
