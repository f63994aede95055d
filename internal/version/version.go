// Package version says which build of pullbroker is running. The release
// build sets Version, Commit and Date with -ldflags -X (deploy/image/build.sh
// takes them from git describe); a plain `go build` or `go install` falls
// back to what the Go toolchain recorded in the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Set by the linker: -X github.com/pullbroker/pullbroker/internal/version.Version=v0.2.0 etc.
var (
	Version string
	Commit  string
	Date    string
)

// Info is one build's identity.
type Info struct {
	Version   string // v0.2.0, v0.2.0-3-gabc1234, or (devel)
	Commit    string // full revision, "" when unknown
	Date      string // build (or commit) time in RFC 3339, "" when unknown
	GoVersion string
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's Info.
func Get() Info {
	once.Do(func() { info = fromBuild(Version, Commit, Date, readBuildInfo()) })
	return info
}

func readBuildInfo() *debug.BuildInfo {
	bi, _ := debug.ReadBuildInfo()
	return bi
}

// fromBuild fills what -ldflags left empty from the toolchain's record: the
// module version for `go install …@v0.2.0`, the VCS revision and commit time
// for a build in a checkout, and "(devel)" when nothing says more.
func fromBuild(version, commit, date string, bi *debug.BuildInfo) Info {
	i := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version()}
	if bi == nil {
		if i.Version == "" {
			i.Version = "(devel)"
		}
		return i
	}
	if i.Version == "" && bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if i.Commit == "" {
				i.Commit = s.Value
			}
		case "vcs.time":
			if i.Date == "" {
				i.Date = s.Value
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if i.Version == "" {
		i.Version = "(devel)"
	}
	if modified && commit == "" && i.Commit != "" {
		i.Commit += "-dirty"
	}
	return i
}

// UserAgent is how pullbroker names itself to upstream registries:
// "pullbroker/v0.2.0", or "pullbroker/devel" (parentheses would start an
// HTTP comment).
func (i Info) UserAgent() string {
	return "pullbroker/" + strings.Trim(i.Version, "()")
}

// String is the multi-line form `pullbroker version` prints.
func (i Info) String() string {
	return fmt.Sprintf("pullbroker %s\n  commit:     %s\n  built:      %s\n  go version: %s\n",
		i.Version, orUnknown(i.Commit), orUnknown(i.Date), i.GoVersion)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
