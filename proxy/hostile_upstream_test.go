package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

// wantMessage checks an OCI error answer's status, code and that its
// message contains each of parts.
func wantMessage(t *testing.T, what string, r response, status int, code string, parts ...string) {
	t.Helper()
	wantError(t, what, r, status, code)
	_, msg, err := fakeregistry.ParseError(r.body)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("%s: message %q does not say %q", what, msg, p)
		}
	}
}

// logLineSays reports whether the log line of request id says what.
func logLineSays(logs, id, what string) bool {
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"id":"`+id+`"`) && strings.Contains(line, what) {
			return true
		}
	}
	return false
}

// TestManifestWithLyingDigestSaysSo: the upstream client's mismatch is
// the same error the cache's is, so the client learns what happened.
func TestManifestWithLyingDigestSaysSo(t *testing.T) {
	e := newEnv(t, "inmemory")
	img := e.up.PushRandom("team/app", "v1")
	_, d, mt := manifestOf(t, img)
	e.up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header().Set("Content-Type", mt)
		w.Header().Set("Docker-Content-Digest", d.String())
		_, _ = w.Write([]byte(`{"schemaVersion":2}`))
		return true
	})
	for _, ref := range []string{"v1", d.String()} {
		wantMessage(t, "lying digest "+ref, e.do(http.MethodGet, tagPath("team/app", ref)), http.StatusBadGateway, "UNKNOWN",
			upstreamName, "does not match its digest", "nothing was cached")
	}
}

// TestHostileUpstreamAnswersAreRefused: what a compromised or misconfigured
// upstream sends instead of a tag list or a manifest is neither passed on
// nor cached.
func TestHostileUpstreamAnswersAreRefused(t *testing.T) {
	e := newEnv(t, "inmemory")
	img := e.up.PushRandom("team/app", "v1")
	raw, _, _ := manifestOf(t, img)
	var metadataHits atomic.Int64
	metadata := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		metadataHits.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		_, _ = w.Write([]byte(`{"schemaVersion":2,"secret":"instance credentials"}`))
	}))
	t.Cleanup(metadata.Close)

	e.up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.HasSuffix(r.URL.Path, "/tags/list"):
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte("<html>sign in</html>"))
		case strings.HasSuffix(r.URL.Path, "/manifests/v1"):
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(raw)
		case strings.HasSuffix(r.URL.Path, "/manifests/v2"):
			http.Redirect(w, r, metadata.URL+"/latest/meta-data", http.StatusFound)
		default:
			return false
		}
		return true
	})
	// The answer names the upstream and says nothing was passed on; what
	// exactly was wrong (and where a redirect pointed) goes to the log.
	for _, c := range []struct{ what, path, logged string }{
		{"HTML tag list", "/v2/" + upstreamName + "/team/app/tags/list", "not a JSON tag list"},
		{"manifest as application/json", tagPath("team/app", "v1"), "not a manifest type"},
		{"manifest redirected", tagPath("team/app", "v2"), "redirect"},
	} {
		r := e.do(http.MethodGet, c.path)
		wantMessage(t, c.what, r, http.StatusBadGateway, "UNKNOWN", upstreamName, "invalid answer", "nothing was passed on or cached")
		if !logLineSays(e.logs.String(), r.Header.Get("X-Request-Id"), c.logged) {
			t.Errorf("%s: the log line of request %s does not say %q", c.what, r.Header.Get("X-Request-Id"), c.logged)
		}
	}
	r := e.do(http.MethodGet, tagPath("team/app", "v2"))
	if strings.Contains(string(r.body), "instance credentials") || metadataHits.Load() != 0 {
		t.Errorf("the redirect target was fetched (%d times) or passed on: %s", metadataHits.Load(), r.body)
	}

	e.up.SetOverride(nil)
	e.up.ResetCounts()
	if r := e.do(http.MethodGet, tagPath("team/app", "v1")); r.StatusCode != http.StatusOK {
		t.Fatalf("after the upstream recovered: status %d", r.StatusCode)
	}
	if n := e.up.Count(http.MethodGet, "/manifests/"); n == 0 {
		t.Error("the refused manifest was served from the cache: it was cached")
	}
}
