package auth

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// fileWatch keeps a material loaded from a file current. Before a use it
// stats the file (at most once per interval) and, when the file is another
// one (a Kubernetes volume swaps a symlink) or its size or mtime changed,
// reads and parses it again. A file that cannot be read or parsed leaves the
// last good material in use.
type fileWatch struct {
	s        *source
	path     string
	what     string // "password file /x", for logs and errors
	interval time.Duration
	parse    func([]byte) (material, error)

	nextCheck atomic.Int64 // unix nanoseconds

	mu       sync.Mutex
	last     os.FileInfo // of the last attempt, good or not
	statErr  bool        // the last stat failed (logged once)
	lastHash [sha256.Size]byte
}

// startFileWatch loads path once (an error is returned: the config names a
// file that is not usable at start) and installs the check.
func (s *source) startFileWatch(what, path string, parse func([]byte) (material, error)) error {
	w := &fileWatch{s: s, path: path, what: what + " " + path, interval: s.opts.FileCheckInterval, parse: parse}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	m, err := parse(data)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	w.last = fi
	w.lastHash = sha256.Sum256(data)
	clear(data)
	s.rotated(m, w.what)
	w.nextCheck.Store(time.Now().Add(w.interval).UnixNano())
	s.beforeUse = w.check
	return nil
}

func (w *fileWatch) check() {
	now := time.Now()
	if w.interval > 0 && now.UnixNano() < w.nextCheck.Load() {
		return
	}
	// One checker at a time; the others go on with the current material.
	if !w.mu.TryLock() {
		return
	}
	defer w.mu.Unlock()
	w.nextCheck.Store(now.Add(w.interval).UnixNano())

	fi, err := os.Stat(w.path)
	if err != nil {
		if !w.statErr {
			w.statErr = true
			w.s.failed(w.what, err)
		}
		return
	}
	recovering := w.statErr
	w.statErr = false
	if !recovering && os.SameFile(w.last, fi) && fi.ModTime().Equal(w.last.ModTime()) && fi.Size() == w.last.Size() {
		return
	}
	w.last = fi
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.s.failed(w.what, err)
		return
	}
	defer clear(data)
	h := sha256.Sum256(data)
	if bytes.Equal(h[:], w.lastHash[:]) {
		// Touched or re-created with the same content.
		w.s.setHealth(func() { w.s.originOK = true })
		return
	}
	m, err := w.parse(data)
	if err != nil {
		w.s.failed(w.what, err)
		return
	}
	w.lastHash = h
	w.s.rotated(m, w.what)
}
