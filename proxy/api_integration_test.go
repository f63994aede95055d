package proxy_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

func TestBase(t *testing.T) {
	e := newEnv(t, "inmemory")
	r := e.do(http.MethodGet, "/v2/")
	if r.StatusCode != http.StatusOK || r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("GET /v2/: status %d, API version %q", r.StatusCode, r.Header.Get("Docker-Distribution-API-Version"))
	}
	if n := e.up.Total(); n != 0 {
		t.Errorf("GET /v2/ made %d upstream requests", n)
	}
}

// TestWriteMethodsUnsupported: every push and delete is 405 UNSUPPORTED,
// and none reaches the upstream.
func TestWriteMethodsUnsupported(t *testing.T) {
	e := newEnv(t, "inmemory")
	e.up.PushRandom("team/app", "v1")
	d := digest.FromString("x").String()
	prefix := "/v2/" + upstreamName + "/team/app"
	for _, req := range []struct{ method, path string }{
		{http.MethodPut, prefix + "/manifests/v1"},
		{http.MethodDelete, prefix + "/manifests/v1"},
		{http.MethodDelete, prefix + "/manifests/" + d},
		{http.MethodPost, prefix + "/blobs/uploads/"},
		{http.MethodPost, prefix + "/blobs/uploads/?mount=" + d + "&from=team/other"},
		{http.MethodPatch, prefix + "/blobs/uploads/0a1b2c"},
		{http.MethodPut, prefix + "/blobs/uploads/0a1b2c?digest=" + d},
		{http.MethodDelete, prefix + "/blobs/uploads/0a1b2c"},
		{http.MethodDelete, prefix + "/blobs/" + d},
		{http.MethodPut, "/v2/team/app/manifests/v1?ns=" + upstreamName},
		{http.MethodPost, "/v2/team/app/blobs/uploads/"},
	} {
		wantError(t, req.method+" "+req.path, e.do(req.method, req.path), http.StatusMethodNotAllowed, "UNSUPPORTED")
	}
	if n := e.up.Total(); n != 0 {
		t.Errorf("write methods made %d upstream requests: %v", n, e.up.Requests())
	}
}

// TestUnknownRegistry: a registry that is not configured is refused with
// NAME_UNKNOWN, in every form, without any upstream request.
func TestUnknownRegistry(t *testing.T) {
	e := newEnv(t, "inmemory")
	d := digest.FromString("x").String()
	for _, path := range []string{
		"/v2/unknown.example/team/app/manifests/v1",
		"/v2/unknown.example/team/app/blobs/" + d,
		"/v2/unknown.example/team/app/tags/list",
		"/v2/team/app/manifests/v1?ns=unknown.example",
		"/v2/" + e.up.Host() + "/team/app/manifests/v1", // the upstream's own address is not its name
		"/v2/localhost/team/app/manifests/v1",
	} {
		wantError(t, path, e.do(http.MethodGet, path), http.StatusNotFound, "NAME_UNKNOWN")
	}
	if n := e.up.Total(); n != 0 {
		t.Errorf("unknown registries made %d upstream requests", n)
	}
}

// nextLink extracts the target of a Link header's rel="next".
var nextLink = regexp.MustCompile(`^<([^>]+)>;\s*rel="next"$`)

// TestTagsListPagination walks the tag list n at a time by following the
// proxy's Link headers, which point at the proxy, never the upstream.
func TestTagsListPagination(t *testing.T) {
	e := newEnv(t, "inmemory")
	img := blobImage(t, randomBytes(t, 64))
	want := []string{"a", "b", "c", "d", "e"}
	for _, tag := range want {
		e.up.Push("team/app", tag, img)
	}
	for _, start := range []string{
		"/v2/" + upstreamName + "/team/app/tags/list?n=2",
		"/v2/team/app/tags/list?n=2&ns=" + upstreamName,
	} {
		var got []string
		pages := 0
		for next := start; next != ""; pages++ {
			if pages > 5 {
				t.Fatalf("%s: more pages than tags", start)
			}
			r := e.do(http.MethodGet, next)
			var list struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			if r.StatusCode != http.StatusOK || json.Unmarshal(r.body, &list) != nil {
				t.Fatalf("GET %s: status %d, %s", next, r.StatusCode, r.body)
			}
			got = append(got, list.Tags...)
			next = ""
			if link := r.Header.Get("Link"); link != "" {
				m := nextLink.FindStringSubmatch(link)
				if m == nil {
					t.Fatalf("Link %q is not a rel=next link", link)
				}
				next = m[1]
				if strings.Contains(next, e.up.Host()) || !strings.HasPrefix(next, strings.SplitN(start, "?", 2)[0]+"?") {
					t.Errorf("Link %q does not point at the proxy's own path for %s", link, start)
				}
				if strings.Contains(start, "ns=") && !strings.Contains(next, "ns="+upstreamName) {
					t.Errorf("mirror-form Link %q lost ns", link)
				}
			}
		}
		if !slices.Equal(got, want) || pages != 3 {
			t.Errorf("%s: %d pages with tags %q, want 3 pages with %q", start, pages, got, want)
		}
	}
	r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/app/tags/list")
	if r.Header.Get("Link") != "" || !strings.Contains(string(r.body), `"e"`) {
		t.Errorf("unpaginated list: Link %q, body %s", r.Header.Get("Link"), r.body)
	}
}

// TestReferrers: an upstream without the referrers API gives an empty OCI
// index; one with it is passed through.
func TestReferrers(t *testing.T) {
	t.Run("no API upstream", func(t *testing.T) {
		e := newEnv(t, "inmemory")
		img := e.up.PushRandom("team/app", "v1")
		_, d, _ := manifestOf(t, img)
		r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/app/referrers/"+d.String())
		var idx struct {
			SchemaVersion int               `json:"schemaVersion"`
			MediaType     string            `json:"mediaType"`
			Manifests     []json.RawMessage `json:"manifests"`
		}
		if r.StatusCode != http.StatusOK || json.Unmarshal(r.body, &idx) != nil {
			t.Fatalf("status %d, body %s", r.StatusCode, r.body)
		}
		if ct := r.Header.Get("Content-Type"); ct != string(types.OCIImageIndex) || idx.SchemaVersion != 2 || idx.MediaType != string(types.OCIImageIndex) || idx.Manifests == nil || len(idx.Manifests) != 0 {
			t.Errorf("Content-Type %q, body %s; want an empty OCI index", ct, r.body)
		}
	})
	t.Run("upstream with the API", func(t *testing.T) {
		e := newEnv(t, "inmemory", fakeregistry.WithRegistryOptions(registry.WithReferrersSupport(true)))
		img := e.up.PushRandom("team/app", "v1")
		_, d, mt := manifestOf(t, img)
		sig := mutate.Subject(blobImage(t, randomBytes(t, 64)), descriptorOf(t, img))
		sigRaw, err := sig.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		e.up.PutManifest("team/app", "sig", mt, sigRaw)
		referrers := "/v2/" + upstreamName + "/team/app/referrers/" + d.String()
		r := e.do(http.MethodGet, referrers)
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != string(types.OCIImageIndex) || !strings.Contains(string(r.body), digest.FromBytes(sigRaw).String()) {
			t.Errorf("status %d, Content-Type %q, body %s; want an index naming %s", r.StatusCode, r.Header.Get("Content-Type"), r.body, digest.FromBytes(sigRaw))
		}

		// Asked on every admission: within the tag TTL the list costs no
		// upstream request.
		e.up.ResetCounts()
		for range 50 {
			if again := e.do(http.MethodGet, referrers); again.StatusCode != http.StatusOK || !bytes.Equal(again.body, r.body) {
				t.Fatalf("cached referrers: status %d, body %s", again.StatusCode, again.body)
			}
		}
		if n := e.up.Count(http.MethodGet, "/referrers/"); n != 0 {
			t.Errorf("50 referrers requests within the TTL sent %d upstream", n)
		}
		// After the TTL it is asked again; with the upstream down it is
		// served stale.
		e.clock.Advance(tagTTL + time.Second)
		if again := e.do(http.MethodGet, referrers); again.StatusCode != http.StatusOK || e.up.Count(http.MethodGet, "/referrers/") != 1 {
			t.Errorf("referrers after the TTL: status %d, %d upstream requests, want 1", again.StatusCode, e.up.Count(http.MethodGet, "/referrers/"))
		}
		e.up.Close()
		e.clock.Advance(tagTTL + time.Second)
		stale := e.do(http.MethodGet, referrers)
		if stale.StatusCode != http.StatusOK || !bytes.Equal(stale.body, r.body) || !strings.HasPrefix(stale.Header.Get("Warning"), "110 ") {
			t.Errorf("referrers with the upstream down: status %d, Warning %q, body %s; want the cached list, stale", stale.StatusCode, stale.Header.Get("Warning"), stale.body)
		}
	})
}

// TestCatalog lists the repositories the cache holds, with pagination.
func TestCatalog(t *testing.T) {
	e := newEnv(t, "filesystem")
	for _, repo := range []string{"team/app", "team/other", "solo"} {
		e.up.PushRandom(repo, "v1")
	}
	e.fetchManifest("team/app")
	e.fetchManifest("team/other")

	want := []string{upstreamName + "/team/app", upstreamName + "/team/other"}
	var catalog struct {
		Repositories []string `json:"repositories"`
	}
	r := e.do(http.MethodGet, "/v2/_catalog")
	if r.StatusCode != http.StatusOK || json.Unmarshal(r.body, &catalog) != nil || !slices.Equal(catalog.Repositories, want) {
		t.Errorf("catalog: status %d, %s; want %q", r.StatusCode, r.body, want)
	}
	r = e.do(http.MethodGet, "/v2/_catalog?n=1")
	m := nextLink.FindStringSubmatch(r.Header.Get("Link"))
	if json.Unmarshal(r.body, &catalog) != nil || !slices.Equal(catalog.Repositories, want[:1]) || m == nil || !strings.HasPrefix(m[1], "/v2/_catalog?") {
		t.Fatalf("catalog page 1: %s, Link %q", r.body, r.Header.Get("Link"))
	}
	r = e.do(http.MethodGet, m[1])
	if json.Unmarshal(r.body, &catalog) != nil || !slices.Equal(catalog.Repositories, want[1:]) || r.Header.Get("Link") != "" {
		t.Errorf("catalog page 2: %s, Link %q", r.body, r.Header.Get("Link"))
	}
}

// TestCatalogListsOnlyWhatClientsMayPull: a repository cached before the
// upstream's globs were narrowed is no longer listed; the listing is
// reused for catalog.cacheTTL; catalog.disabled turns it off.
func TestCatalogListsOnlyWhatClientsMayPull(t *testing.T) {
	var cfg *config.Config
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) { cfg = c })
	for _, repo := range []string{"team/app", "secret/app", "team/late"} {
		e.up.PushRandom(repo, "v1")
	}
	e.fetchManifest("team/app")
	e.fetchManifest("secret/app")

	narrowed := e.restarted(cfg, func(c *config.Config) {
		c.Upstreams = []config.Upstream{c.Upstreams[0]}
		c.Upstreams[0].Repositories = []string{"team/*"}
	})
	listed := func(e *env) []string {
		t.Helper()
		var catalog struct {
			Repositories []string `json:"repositories"`
		}
		r := e.do(http.MethodGet, "/v2/_catalog")
		if r.StatusCode != http.StatusOK || json.Unmarshal(r.body, &catalog) != nil {
			t.Fatalf("catalog: status %d, %s", r.StatusCode, r.body)
		}
		return catalog.Repositories
	}
	if got, want := listed(narrowed), []string{upstreamName + "/team/app"}; !slices.Equal(got, want) {
		t.Fatalf("catalog = %q, want %q: a repository outside the globs was listed", got, want)
	}

	narrowed.fetchManifest("team/late")
	if got := listed(narrowed); slices.Contains(got, upstreamName+"/team/late") {
		t.Fatalf("catalog = %q: listed again within catalog.cacheTTL", got)
	}
	e.clock.Advance(config.DefaultCatalogCacheTTL)
	if got := listed(narrowed); !slices.Contains(got, upstreamName+"/team/late") {
		t.Fatalf("catalog = %q: not listed again after catalog.cacheTTL", got)
	}

	off := e.restarted(cfg, func(c *config.Config) { c.Catalog.Disabled = true })
	wantError(t, "disabled catalog", off.do(http.MethodGet, "/v2/_catalog"), http.StatusNotFound, "UNSUPPORTED")
}

// descriptorOf describes img, as a referrer's subject.
func descriptorOf(t *testing.T, img v1.Image) v1.Descriptor {
	t.Helper()
	d, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	return *d
}

// TestUpstreamErrors: upstream answers become the OCI error a client can
// act on, and a manifest that does not match its digest is refused and not
// cached.
func TestUpstreamErrors(t *testing.T) {
	e := newEnv(t, "inmemory")
	img := e.up.PushRandom("team/app", "v1")
	raw, d, mt := manifestOf(t, img)
	wantError(t, "unknown tag", e.do(http.MethodGet, tagPath("team/app", "nope")), http.StatusNotFound, "MANIFEST_UNKNOWN")
	wantError(t, "unknown repository", e.do(http.MethodGet, tagPath("team/absent", "v1")), http.StatusNotFound, "MANIFEST_UNKNOWN")
	wantError(t, "unknown blob", e.do(http.MethodGet, blobPath("team/app", digest.FromString("absent"))), http.StatusNotFound, "BLOB_UNKNOWN")

	answer := func(status int) {
		e.up.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			fakeregistry.WriteError(w, status, "X", "upstream says no")
			return true
		})
	}
	for _, tc := range []struct {
		upstream, status int
		code             string
	}{
		{http.StatusInternalServerError, http.StatusServiceUnavailable, "UNAVAILABLE"},
		{http.StatusTooManyRequests, http.StatusTooManyRequests, "TOOMANYREQUESTS"},
		{http.StatusUnauthorized, http.StatusForbidden, "DENIED"},
	} {
		answer(tc.upstream)
		wantError(t, "upstream "+strconv.Itoa(tc.upstream), e.do(http.MethodGet, tagPath("team/app", "v1")), tc.status, tc.code)
	}

	// Wrong bytes under the right digest.
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
		wantError(t, "corrupt manifest "+ref, e.do(http.MethodGet, tagPath("team/app", ref)), http.StatusBadGateway, "UNKNOWN")
	}
	e.up.SetOverride(nil)
	e.up.ResetCounts()
	r := e.do(http.MethodGet, tagPath("team/app", d.String()))
	if r.StatusCode != http.StatusOK || !bytes.Equal(r.body, raw) || e.up.Count(http.MethodGet, "/manifests/"+d.String()) != 1 {
		t.Errorf("after the upstream recovered: status %d, %d upstream GETs; want the manifest fetched again", r.StatusCode, e.up.Count(http.MethodGet, "/manifests/"+d.String()))
	}
}
