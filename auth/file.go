package auth

import (
	"fmt"

	"github.com/pullbroker/pullbroker/internal/filewatch"
)

// startFileWatch loads path once (an error is returned: the config names a
// file that is not usable at start) and, before each use, lets the shared
// file watcher look for a new version (at most once per
// Options.FileCheckInterval). A new version is taken into use; one that
// cannot be read or parsed keeps the last good material and marks the
// source unhealthy until the file loads again.
func (s *source) startFileWatch(what, path string, parse func([]byte) (material, error)) error {
	what += " " + path
	w, err := filewatch.New(path, parse, filewatch.Options[material]{
		Interval:  s.opts.FileCheckInterval,
		OnReload:  func(m material) { s.rotated(m, what) },
		OnError:   func(err error) { s.failed(what, err) },
		OnRecover: func() { s.setHealth(func() { s.originOK = true }) },
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	s.rotated(w.Get(), what)
	s.beforeUse = func() { w.Get() }
	return nil
}
