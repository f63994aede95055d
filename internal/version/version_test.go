package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuild(t *testing.T) {
	vcs := &debug.BuildInfo{
		Main: debug.Module{Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"},
			{Key: "vcs.time", Value: "2026-12-01T10:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, tc := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{"ldflags win", "v0.2.0", "def456", "2026-12-06T00:00:00Z", vcs,
			Info{Version: "v0.2.0", Commit: "def456", Date: "2026-12-06T00:00:00Z"}},
		{"checkout build", "", "", "", vcs,
			Info{Version: "(devel)", Commit: "abc123-dirty", Date: "2026-12-01T10:00:00Z"}},
		{"go install", "", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.1"}},
			Info{Version: "v0.3.1"}},
		{"nothing known", "", "", "", nil, Info{Version: "(devel)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuild(tc.version, tc.commit, tc.date, tc.bi)
			got.GoVersion = ""
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestUserAgent(t *testing.T) {
	if ua := (Info{Version: "(devel)"}).UserAgent(); ua != "pullbroker/devel" {
		t.Errorf("UserAgent = %q", ua)
	}
	if ua := (Info{Version: "v0.2.0"}).UserAgent(); ua != "pullbroker/v0.2.0" {
		t.Errorf("UserAgent = %q", ua)
	}
	s := Info{Version: "v0.2.0", GoVersion: "go1.26.8"}.String()
	for _, want := range []string{"pullbroker v0.2.0", "commit:     unknown", "go version: go1.26.8"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q:\n%s", want, s)
		}
	}
}
