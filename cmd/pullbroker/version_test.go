package main

import (
	"bytes"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/pullbroker/pullbroker/internal/version"
)

func TestVersionCommandAndFlag(t *testing.T) {
	want := version.Get()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		for _, s := range []string{"pullbroker " + want.Version, "commit:", "built:", "go version: " + want.GoVersion} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("%v printed %q, lacks %q", args, out.String(), s)
			}
		}
	}
}

// The build is named in pullbroker_build_info and in the User-Agent sent
// to upstreams.
func TestBuildInfoMetricAndUserAgent(t *testing.T) {
	w := startWired(t)
	var mu sync.Mutex
	agents := map[string]bool{}
	w.upstream.SetOverride(func(_ http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		agents[r.UserAgent()] = true
		mu.Unlock()
		return false
	})
	w.pull(t, testTag)

	v := version.Get()
	mu.Lock()
	for ua := range agents {
		if !strings.HasPrefix(ua, v.UserAgent()+" ") {
			t.Errorf("upstream saw User-Agent %q, want it to start with %q", ua, v.UserAgent())
		}
	}
	if len(agents) == 0 {
		t.Error("the upstream saw no request")
	}
	mu.Unlock()

	_, body := w.get(t, w.admin.URL+"/metrics", nil)
	want := `pullbroker_build_info{build_date="` + v.Date + `",commit="` + v.Commit + `",go_version="` + v.GoVersion + `",version="` + v.Version + `"} 1`
	if !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %s", want)
	}
}
