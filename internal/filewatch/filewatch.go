// Package filewatch keeps a value parsed from files current while the files
// are replaced under it: credentials, client user lists, tokens and
// certificates that operators rotate without a restart.
//
// The files are checked on access, at most once per interval: a Get within
// the interval costs an atomic load, and the Get that finds the interval
// over reads the files while concurrent Gets go on with the current value.
// No goroutine runs, so there is nothing to stop. A check reads the files
// and parses them only when their content differs from what is loaded.
// Comparing content, not modification times or inodes, sees every way of
// replacing a file: a rewrite in place within the file system's timestamp
// granularity, a rename over it, and a Kubernetes Secret or ConfigMap
// volume, where the file is a symlink through "..data" and the kubelet
// swaps "..data" to a new timestamped directory.
//
// Content that cannot be read or parsed leaves the last good value in use;
// each distinct failure is reported once through Options.OnError, so a
// lasting problem does not flood the caller's log.
package filewatch

import (
	"crypto/sha256"
	"encoding/binary"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval bounds how often the files are looked at when Options
// leave Interval zero.
const DefaultInterval = time.Second

// Options tell a Value how often to look and whom to tell.
type Options[T any] struct {
	// Interval is how often, at most, Get looks at the files. Zero means
	// DefaultInterval; negative means on every Get.
	Interval time.Duration
	// OnReload is called with each new value taken into use after the
	// first (which New returns).
	OnReload func(T)
	// OnError is called once per distinct failure to read or parse the
	// files; the last good value stays in use.
	OnError func(error)
	// OnRecover is called when, after a failure, the files hold the
	// loaded content again (a removed file put back unchanged).
	OnRecover func()
}

// Value is the current parsed content of a set of files.
type Value[T any] struct {
	paths []string
	parse func([][]byte) (T, error)
	opts  Options[T]

	cur       atomic.Pointer[T]
	nextCheck atomic.Int64 // unix nanoseconds

	mu       sync.Mutex
	loaded   [sha256.Size]byte // content behind cur
	rejected [sha256.Size]byte // content that last failed to parse
	err      error             // of the last check
}

// New reads and parses the file at path. A file that does not load now is
// an error: the configuration names a file that is not usable. parse must
// not keep the slice it is given: it is cleared afterwards, so that a secret
// read from the file does not linger in memory.
func New[T any](path string, parse func([]byte) (T, error), opts Options[T]) (*Value[T], error) {
	return NewSet([]string{path}, func(contents [][]byte) (T, error) { return parse(contents[0]) }, opts)
}

// NewSet is New for files that are only usable together (a certificate and
// its key); parse gets their contents in the order of paths. While they are
// replaced one after the other, a mismatched set fails to parse and the
// last good value stays until the set is whole again.
func NewSet[T any](paths []string, parse func([][]byte) (T, error), opts Options[T]) (*Value[T], error) {
	if opts.Interval == 0 {
		opts.Interval = DefaultInterval
	}
	v := &Value[T]{paths: paths, parse: parse, opts: opts}
	contents, err := readAll(paths)
	if err != nil {
		return nil, err
	}
	defer clearAll(contents)
	val, err := parse(contents)
	if err != nil {
		return nil, err
	}
	v.cur.Store(&val)
	v.loaded = sum(contents)
	v.nextCheck.Store(time.Now().Add(opts.Interval).UnixNano())
	return v, nil
}

// Get returns the current value, looking at the files first when the
// interval has passed.
func (v *Value[T]) Get() T {
	if v.opts.Interval < 0 || time.Now().UnixNano() >= v.nextCheck.Load() {
		// One checker at a time; the others go on with the current value.
		if v.mu.TryLock() {
			v.check()
			v.mu.Unlock()
		}
	}
	return *v.cur.Load()
}

// Check looks at the files now, whatever the interval, and returns why
// they do not load (nil when the current value is theirs).
func (v *Value[T]) Check() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.check()
	return v.err
}

func (v *Value[T]) check() {
	v.nextCheck.Store(time.Now().Add(v.opts.Interval).UnixNano())
	contents, err := readAll(v.paths)
	if err != nil {
		if v.err == nil || v.err.Error() != err.Error() {
			v.report(err)
		}
		v.err, v.rejected = err, [sha256.Size]byte{}
		return
	}
	defer clearAll(contents)
	s := sum(contents)
	switch s {
	case v.loaded:
		if v.err != nil {
			v.err = nil
			if v.opts.OnRecover != nil {
				v.opts.OnRecover()
			}
		}
		return
	case v.rejected:
		return // reported when first seen
	}
	val, err := v.parse(contents)
	if err != nil {
		v.err, v.rejected = err, s
		v.report(err)
		return
	}
	v.cur.Store(&val)
	v.loaded, v.rejected, v.err = s, [sha256.Size]byte{}, nil
	if v.opts.OnReload != nil {
		v.opts.OnReload(val)
	}
}

func (v *Value[T]) report(err error) {
	if v.opts.OnError != nil {
		v.opts.OnError(err)
	}
}

func readAll(paths []string) ([][]byte, error) {
	contents := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			clearAll(contents[:i])
			return nil, err
		}
		contents[i] = b
	}
	return contents, nil
}

func clearAll(contents [][]byte) {
	for _, b := range contents {
		clear(b)
	}
}

// sum identifies a set of contents; lengths are included so that moving
// bytes from one file to the next changes it.
func sum(contents [][]byte) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, b := range contents {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var s [sha256.Size]byte
	h.Sum(s[:0])
	return s
}
