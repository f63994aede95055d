package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

const appTag = "/v2/" + upstreamName + "/team/app/manifests/v1"

// pushVersion pushes a new random image as team/app:v1 and returns its digest.
func (e *env) pushVersion() digest.Digest {
	e.t.Helper()
	img := e.up.PushRandom("team/app", "v1")
	d, err := img.Digest()
	if err != nil {
		e.t.Fatal(err)
	}
	return digest.Digest(d.String())
}

func (e *env) headDigest(path string) digest.Digest {
	e.t.Helper()
	r := e.do(http.MethodHead, path)
	if r.StatusCode != http.StatusOK {
		e.t.Fatalf("HEAD %s: status %d", path, r.StatusCode)
	}
	return digest.Digest(r.Header.Get("Docker-Content-Digest"))
}

var appImage = tags.Image{Registry: upstreamName, Repository: "team/app", Tag: "v1"}

// TestPinnedTagAlwaysPull is imagePullPolicy: Always against a pinned tag:
// no upstream request at all, the same digest until the pin is refreshed.
func TestPinnedTagAlwaysPull(t *testing.T) {
	e := newEnv(t, "filesystem")
	first := e.pushVersion()
	pin, err := e.tags.SetPin(t.Context(), appImage, "")
	if err != nil || pin.Digest != first || pin.Policy != config.PolicyManual {
		t.Fatalf("SetPin = %+v, %v; want %s", pin, err, first)
	}
	e.up.ResetCounts()
	for i := range 1000 {
		if i == 500 {
			e.clock.Advance(10 * tagTTL) // far past every TTL
		}
		if got := e.headDigest(appTag); got != first {
			t.Fatalf("HEAD %d: digest %s, want the pinned %s", i, got, first)
		}
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("1000 HEADs of a pinned tag made %d upstream requests, want 0", n)
	}

	moved := e.pushVersion()
	e.up.ResetCounts()
	if got := e.headDigest(appTag); got != first {
		t.Fatalf("after the upstream moved the tag: %s, want the pinned %s", got, first)
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("%d upstream requests after the tag moved, want 0", n)
	}

	res, err := e.tags.RefreshPin(t.Context(), appImage)
	if err != nil || !res.Changed || res.Old != first || res.New != moved {
		t.Fatalf("RefreshPin = %+v, %v; want %s -> %s", res, err, first, moved)
	}
	if n := e.up.Count(http.MethodGet, "/manifests/v1"); n != 0 {
		t.Errorf("refresh GET the tag %d times; a HEAD and a GET by digest suffice", n)
	}
	if got := e.headDigest(appTag); got != moved {
		t.Fatalf("after refresh: %s, want %s", got, moved)
	}
}

func TestStickyRuleKeepsFirstResolution(t *testing.T) {
	e := newEnvWithConfig(t, "inmemory", func(c *config.Config) {
		c.Pins = []config.PinRule{{Registry: upstreamName, Repository: "team/**", Tag: "v*", Policy: config.PolicySticky}}
	})
	first := e.pushVersion()
	if got := e.headDigest(appTag); got != first {
		t.Fatalf("first resolution %s, want %s", got, first)
	}
	e.pushVersion()
	e.clock.Advance(10 * tagTTL)
	e.up.ResetCounts()
	if got := e.headDigest(appTag); got != first {
		t.Fatalf("sticky tag moved to %s, want %s", got, first)
	}
	if n := e.up.Total(); n != 0 {
		t.Fatalf("sticky tag made %d upstream requests, want 0", n)
	}
	pin, err := e.store.GetPin(t.Context(), upstreamName, "team/app", "v1")
	if err != nil || pin.Policy != config.PolicySticky {
		t.Fatalf("pin = %+v, %v", pin, err)
	}
}

func TestLockedRuleNeverAsksForTheTag(t *testing.T) {
	lockedImg := blobImage(t, randomBytes(t, 1024))
	h, err := lockedImg.Digest()
	if err != nil {
		t.Fatal(err)
	}
	locked := digest.Digest(h.String())
	lockFile := filepath.Join(t.TempDir(), "images.lock")
	if err := os.WriteFile(lockFile, []byte("pins:\n  "+upstreamName+"/team/app:v1: "+locked.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnvWithConfig(t, "inmemory", func(c *config.Config) {
		c.Pins = []config.PinRule{{Registry: upstreamName, Repository: "team/*", Policy: config.PolicyLocked, LockFile: lockFile}}
	})
	e.up.Push("team/app", "v1", lockedImg)
	e.pushVersion() // the upstream tag moves on; the lock file does not
	e.up.ResetCounts()
	if got := e.headDigest(appTag); got != locked {
		t.Fatalf("locked tag gave %s, want %s", got, locked)
	}
	if n := e.up.Count("", "/manifests/v1"); n != 0 {
		t.Fatalf("the upstream was asked for the locked tag %d times", n)
	}
	r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/app/manifests/v2")
	wantError(t, "tag missing from the lock file", r, http.StatusNotFound, "MANIFEST_UNKNOWN")
	if !strings.Contains(string(r.body), "lock file") {
		t.Errorf("message does not say why: %s", r.body)
	}
}

func TestTTLRuleHasItsOwnTTL(t *testing.T) {
	e := newEnvWithConfig(t, "inmemory", func(c *config.Config) {
		c.Pins = []config.PinRule{{Repository: "team/app", Policy: config.PolicyTTL, TTL: time.Minute}}
	})
	e.pushVersion()
	e.headDigest(appTag)
	e.up.ResetCounts()
	e.clock.Advance(2 * time.Minute) // past the rule's TTL, within the upstream's
	e.headDigest(appTag)
	if n := e.up.Count(http.MethodHead, "/manifests/v1"); n != 1 {
		t.Fatalf("revalidation HEADs = %d, want 1", n)
	}
	if n := e.up.Count(http.MethodGet, "/manifests/"); n != 0 {
		t.Fatalf("manifest GETs = %d, want 0: the digest did not change", n)
	}
}

// TestOfflineModeOpensNoConnection serves a warm cache with the upstream
// switched offline: no connection, and a miss says why.
func TestOfflineModeOpensNoConnection(t *testing.T) {
	var cfg *config.Config
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) { cfg = c })
	content := randomBytes(t, 64<<10)
	d := e.pushBlobImage("team/app", content)
	e.fetchManifest("team/app")
	if r := e.do(http.MethodGet, blobPath("team/app", d)); r.StatusCode != http.StatusOK {
		t.Fatalf("warming: status %d", r.StatusCode)
	}
	eventually(t, "the blob is committed", func() bool { return committed(t, e.store, d) })

	e = e.restarted(cfg, func(c *config.Config) { c.Mode = config.ModeOffline })
	conns := e.up.Connections()
	e.clock.Advance(10 * tagTTL)
	if r := e.do(http.MethodGet, appTag); r.StatusCode != http.StatusOK {
		t.Fatalf("offline cached tag: status %d: %s", r.StatusCode, r.body)
	}
	if r := e.do(http.MethodGet, blobPath("team/app", d)); r.StatusCode != http.StatusOK || string(r.body) != string(content) {
		t.Fatalf("offline cached blob: status %d", r.StatusCode)
	}
	r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/other/manifests/v1")
	wantError(t, "offline miss", r, http.StatusNotFound, "MANIFEST_UNKNOWN")
	if !strings.Contains(string(r.body), "offline") {
		t.Errorf("offline miss does not say offline: %s", r.body)
	}
	r = e.do(http.MethodGet, blobPath("team/app", digest.Digest("sha256:"+strings.Repeat("a", 64))))
	wantError(t, "offline blob miss", r, http.StatusNotFound, "BLOB_UNKNOWN")
	if n := e.up.Connections() - conns; n != 0 {
		t.Fatalf("offline proxy opened %d upstream connections", n)
	}
}

func TestAdminAPIRequiresItsToken(t *testing.T) {
	e := newEnv(t, "inmemory")
	e.pushVersion()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("admin-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	adminHandler, err := e.handler.AdminHandler(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(adminHandler)
	t.Cleanup(admin.Close)
	for _, auth := range []string{"", "Bearer wrong", "Basic YWRtaW4tc2VjcmV0"} {
		var header []string
		if auth != "" {
			header = []string{"Authorization", auth}
		}
		r := doRequest(t, t.Context(), http.MethodPut, admin.URL+"/api/v1/pins/"+upstreamName+"/team/app:v1", header...)
		if r.StatusCode != http.StatusUnauthorized || strings.Contains(string(r.body), "admin-secret") {
			t.Fatalf("auth %q: status %d body %s", auth, r.StatusCode, r.body)
		}
	}
	r := doRequest(t, t.Context(), http.MethodPut, admin.URL+"/api/v1/pins/"+upstreamName+"/team/app:v1", "Authorization", "Bearer admin-secret")
	if r.StatusCode != http.StatusOK || !strings.Contains(string(r.body), `"policy": "manual"`) {
		t.Fatalf("set pin: status %d body %s", r.StatusCode, r.body)
	}
	r = doRequest(t, t.Context(), http.MethodGet, admin.URL+"/api/v1/pins", "Authorization", "Bearer admin-secret")
	if r.StatusCode != http.StatusOK || !strings.Contains(string(r.body), "team/app") {
		t.Fatalf("list pins: status %d body %s", r.StatusCode, r.body)
	}
	pin := admin.URL + "/api/v1/pins/" + upstreamName + "/team/app:v1"
	if r = doRequest(t, t.Context(), http.MethodDelete, pin, "Authorization", "Bearer admin-secret"); r.StatusCode != http.StatusNoContent {
		t.Fatalf("delete pin: status %d body %s", r.StatusCode, r.body)
	}
	// A second delete finds nothing to remove, and says so.
	r = doRequest(t, t.Context(), http.MethodDelete, pin, "Authorization", "Bearer admin-secret")
	if r.StatusCode != http.StatusNotFound || !strings.Contains(string(r.body), "is not pinned") {
		t.Fatalf("delete of a missing pin: status %d body %s", r.StatusCode, r.body)
	}
	r = doRequest(t, t.Context(), http.MethodPut, admin.URL+"/api/v1/pins/elsewhere.example/app:v1", "Authorization", "Bearer admin-secret")
	if r.StatusCode != http.StatusNotFound || !strings.Contains(string(r.body), "not a configured upstream") {
		t.Fatalf("pin of an unknown registry: status %d body %s", r.StatusCode, r.body)
	}

	// A rotated token replaces the old one without a restart; an emptied
	// file keeps the last good token.
	if err := os.WriteFile(tokenFile, []byte("rotated-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	listWith := func(token string) int {
		return doRequest(t, t.Context(), http.MethodGet, admin.URL+"/api/v1/pins", "Authorization", "Bearer "+token).StatusCode
	}
	eventually(t, "the rotated admin token is accepted", func() bool { return listWith("rotated-secret") == http.StatusOK })
	if code := listWith("admin-secret"); code != http.StatusUnauthorized {
		t.Fatalf("the old admin token after rotation: status %d, want 401", code)
	}
	if err := os.WriteFile(tokenFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past the watch interval
	if code := listWith("rotated-secret"); code != http.StatusOK {
		t.Fatalf("with the token file emptied: status %d, want the last good token to work", code)
	}
	if code := listWith(""); code != http.StatusUnauthorized {
		t.Fatalf("empty bearer token: status %d, want 401", code)
	}
}

// TestOfflineFollowsARunningFill: a blob whose fill began before the
// upstream was switched offline is still served, not refused as a miss.
func TestOfflineFollowsARunningFill(t *testing.T) {
	var cfg *config.Config
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) { cfg = c })
	content := randomBytes(t, 256<<10)
	d := e.pushBlobImage("team/app", content)
	e.fetchManifest("team/app")
	release := make(chan struct{})
	interceptBlobGETs(e.up, d, release, nil)

	results := make(chan response, 2)
	go func() { results <- doRequest(t, t.Context(), http.MethodGet, e.srv.URL+blobPath("team/app", d)) }()
	eventually(t, "the fill is running", func() bool { return e.store.RunningFill(d) != nil })
	off := e.restarted(cfg, func(c *config.Config) { c.Mode = config.ModeOffline })
	go func() { results <- doRequest(t, t.Context(), http.MethodGet, off.srv.URL+blobPath("team/app", d)) }()
	eventually(t, "both clients are waiting", func() bool { return e.inflight.Load() == 1 && off.inflight.Load() == 1 })
	close(release)
	for range 2 {
		r := <-results
		if r.StatusCode != http.StatusOK || string(r.body) != string(content) {
			t.Fatalf("status %d, %d bytes, read error %v", r.StatusCode, len(r.body), r.readErr)
		}
	}
	if n := e.up.Count(http.MethodGet, "/blobs/"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
}
