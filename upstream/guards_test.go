package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

// target is a server a hostile upstream redirects to; it counts its hits.
func target(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write([]byte(`{"schemaVersion":2,"tags":["metadata"]}`))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func wantInvalidResponse(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrInvalidResponse) || IsUnavailable(err) {
		t.Errorf("%s: %v, want ErrInvalidResponse (not unavailable)", what, err)
	}
}

// TestRedirectsFollowedOnlyForBlobs: a manifest, tag list or referrers
// answer must come from the registry itself, even when the upstream may
// redirect blobs to private addresses.
func TestRedirectsFollowedOnlyForBlobs(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	srv, hits := target(t)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") || strings.Contains(r.URL.Path, "/tags/") || strings.Contains(r.URL.Path, "/referrers/") {
			http.Redirect(w, r, srv.URL+"/latest/meta-data", http.StatusFound)
			return true
		}
		return false
	})
	c := newClient(t, f, Options{}) // allowPrivateRedirects: the policy, not the dial guard, refuses
	d := digest.FromString("x")
	_, err := c.GetManifest(ctx, "team/app", "v1", nil)
	wantInvalidResponse(t, "manifest GET", err)
	_, err = c.HeadManifest(ctx, "team/app", "v1", nil)
	wantInvalidResponse(t, "manifest HEAD", err)
	_, _, err = c.Tags(ctx, "team/app", nil)
	wantInvalidResponse(t, "tag list", err)
	_, _, err = c.Referrers(ctx, "team/app", d, nil)
	wantInvalidResponse(t, "referrers", err)
	if n := hits.Load(); n != 0 {
		t.Errorf("the redirect target was fetched %d times", n)
	}
	if err != nil && strings.Contains(err.Error(), "meta-data") {
		t.Errorf("error names the redirect target's path: %v", err)
	}
}

// TestBlobRedirectToPrivateAddressRefused: without allowPrivateRedirects a
// blob redirect to a loopback address is refused where it is dialled, for
// an address literal and for a name that resolves to one, while the
// configured endpoint itself (on 127.0.0.1) is used as usual.
func TestBlobRedirectToPrivateAddressRefused(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer, fakeregistry.WithCDN())
	img := f.PushRandom("team/app", "v1")
	_, _, _, blobs := imageFacts(t, img)
	blob := digest.Digest(blobs[0].String())
	u := upstreamConfig(f)
	u.AllowPrivateRedirects = false
	c, err := New(u, Options{Authenticator: f.Authenticator()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatalf("the configured endpoint on 127.0.0.1: %v", err)
	}
	_, _, err = c.GetBlob(ctx, "team/app", blob)
	wantInvalidResponse(t, "redirect to 127.0.0.2", err)
	if n := f.CDNRequests(); n != 0 {
		t.Errorf("blob storage on 127.0.0.2 got %d requests", n)
	}

	srv, hits := target(t)
	byName := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, byName+"/blob", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	_, _, err = c.GetBlob(ctx, "team/app", blob)
	wantInvalidResponse(t, "redirect to localhost", err)
	if n := hits.Load(); n != 0 {
		t.Errorf("a redirect to localhost reached its target %d times", n)
	}
}

func TestBlobRedirectHopsAreBounded(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, r.URL.Path, http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	_, _, err := newClient(t, f, Options{}).GetBlob(ctx, "team/app", digest.FromString("x"))
	wantInvalidResponse(t, "redirect loop", err)
	if n := f.Count(http.MethodGet, "/blobs/"); n != maxRedirects+1 {
		t.Errorf("blob GETs = %d, want %d", n, maxRedirects+1)
	}
}

func TestTagListThatIsNotJSONIsRefused(t *testing.T) {
	f := fakeregistry.New(t)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			return false
		}
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html>login</html>"))
		return true
	})
	_, _, err := newClient(t, f, Options{}).Tags(testContext(t), "team/app", nil)
	wantInvalidResponse(t, "HTML tag list", err)
}

func TestNonManifestMediaTypeIsRefused(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	img := f.PushRandom("team/app", "v1")
	_, dgst, _, _ := imageFacts(t, img)
	c := newClient(t, f, Options{})
	for _, tc := range []struct{ contentType, body string }{
		{"application/json", `{"name":"team/app","tags":["v1"]}`},
		{"text/html; charset=utf-8", "<html></html>"},
		{"", `{"schemaVersion":2}`}, // no type sent, none declared
	} {
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			w.Header()["Content-Type"] = []string{tc.contentType}
			w.Header().Set("Docker-Content-Digest", digest.FromString(tc.body).String())
			w.Write([]byte(tc.body))
			return true
		})
		_, err := c.GetManifest(ctx, "team/app", "v1", nil)
		wantInvalidResponse(t, "GET as "+tc.contentType, err)
		if tc.contentType != "" {
			_, err = c.HeadManifest(ctx, "team/app", dgst.String(), nil)
			wantInvalidResponse(t, "HEAD as "+tc.contentType, err)
		}
	}
	// A registry that sends no Content-Type is judged by the declared type.
	raw, _, mediaType, _ := imageFacts(t, img)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		w.Header()["Content-Type"] = nil
		w.Write(raw)
		return true
	})
	if m, err := c.GetManifest(ctx, "team/app", dgst.String(), nil); err != nil || m.Digest != dgst {
		t.Errorf("manifest without Content-Type declaring %s: %v", mediaType, err)
	}
}

// TestTokenRealmOnAnotherHostIsRefused: a challenge naming a realm outside
// allowedRealmHosts gets no credentials; listing its host lets it have them.
func TestTokenRealmOnAnotherHostIsRefused(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	// The same token server, named by a host the registry (127.0.0.1) is not.
	realm := "http://localhost:" + f.URL()[strings.LastIndex(f.URL(), ":")+1:] + "/token"
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" || (strings.HasPrefix(r.URL.Path, "/v2/") && r.Header.Get("Authorization") == "") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`?client=x",service="fake"`)
			fakeregistry.WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return true
		}
		return false
	})

	_, err := newClient(t, f, Options{}).HeadManifest(ctx, "team/app", "v1", nil)
	if !errors.Is(err, ErrRealmNotAllowed) || IsUnavailable(err) {
		t.Fatalf("got %v, want ErrRealmNotAllowed", err)
	}
	if !strings.Contains(err.Error(), realm) || strings.Contains(err.Error(), "client=x") {
		t.Errorf("error %q should name the realm %s without its query", err, realm)
	}
	if n := f.Count("", "/token"); n != 0 {
		t.Fatalf("the refused realm got %d token requests", n)
	}

	u := upstreamConfig(f)
	u.AllowedRealmHosts = []string{"localhost"}
	c, err := New(u, Options{Authenticator: f.Authenticator()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatalf("realm host allowed: %v", err)
	}
	if n := f.Count("", "/token"); n == 0 {
		t.Error("the allowed realm got no token request")
	}
}

func TestRealmPolicy(t *testing.T) {
	for _, tc := range []struct {
		registry   string
		configured []string
		allowed    []string
		refused    []string
	}{
		{"registry-1.docker.io", nil, []string{"auth.docker.io", "registry-1.docker.io"}, []string{"docker.io.evil.example", "auth.docker.com"}},
		{"ghcr.io", nil, []string{"ghcr.io"}, []string{"github.com"}},
		{"gcr.io", nil, []string{"gcr.io"}, []string{"accounts.google.com"}},
		{"quay.io", nil, []string{"quay.io"}, []string{"quay.io.example"}},
		{"public.ecr.aws", nil, []string{"public.ecr.aws"}, []string{"evil.aws"}},
		{"europe-docker.pkg.dev", nil, []string{"europe-docker.pkg.dev"}, []string{"other.pkg.dev.example"}},
		{"registry.k8s.io", nil, []string{"registry.k8s.io", "us-west1-docker.pkg.dev"}, []string{"pkg.dev.evil.example"}},
		{"registry.example.com:5000", nil, []string{"registry.example.com", "auth.example.com"}, []string{"example.org"}},
		{"127.0.0.1:5000", nil, []string{"127.0.0.1"}, []string{"127.0.0.2", "localhost"}},
		{"registry.internal:5000", []string{"sso.corp.example", "*.auth.example"}, []string{"registry.internal", "sso.corp.example", "a.auth.example"}, []string{"auth.example", "corp.example"}},
	} {
		set := realmHosts(tc.registry, tc.configured)
		for _, h := range tc.allowed {
			if !set.contains(h) {
				t.Errorf("registry %s %v: realm host %s refused", tc.registry, tc.configured, h)
			}
		}
		for _, h := range tc.refused {
			if set.contains(h) {
				t.Errorf("registry %s %v: realm host %s allowed", tc.registry, tc.configured, h)
			}
		}
	}
}

// TestRedirectPolicyFollowsPartnerHosts: registry.k8s.io serves its API
// from Artifact Registry, so its manifest redirects there are followed;
// any other host is refused.
func TestRedirectPolicyFollowsPartnerHosts(t *testing.T) {
	p := redirectPolicy{apiHosts: partnerHosts["registry.k8s.io"]}
	via := func(cl call) []*http.Request {
		req := httptest.NewRequestWithContext(context.WithValue(t.Context(), callKey{}, cl), cl.method, "https://registry.k8s.io/v2/pause/"+cl.path, nil)
		return []*http.Request{req}
	}
	to := func(from []*http.Request, target string) *http.Request {
		return httptest.NewRequestWithContext(from[0].Context(), from[0].Method, target, nil)
	}
	manifest := via(call{method: http.MethodGet, repo: "pause", path: "manifests/3.10"})
	if err := p.check(to(manifest, "https://us-west1-docker.pkg.dev/v2/k8s-artifacts-prod/images/pause/manifests/3.10"), manifest); err != nil {
		t.Errorf("manifest redirect to Artifact Registry: %v", err)
	}
	if err := p.check(to(manifest, "https://evil.example/v2/pause/manifests/3.10"), manifest); !errors.Is(err, ErrInvalidResponse) {
		t.Errorf("manifest redirect to another host: %v, want ErrInvalidResponse", err)
	}
	blob := via(call{method: http.MethodGet, repo: "pause", path: "blobs/sha256:x", followRedirects: true})
	if err := p.check(to(blob, "https://storage.example/b"), blob); err != nil {
		t.Errorf("blob redirect: %v", err)
	}
	hops := append(blob, blob[0], blob[0], blob[0])
	if err := p.check(to(blob, "https://storage.example/b"), hops); !errors.Is(err, ErrInvalidResponse) {
		t.Errorf("redirect after %d hops: %v, want ErrInvalidResponse", len(hops), err)
	}
}

// roundTripFunc records what reaches the transport below the marker.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// TestRedirectThroughHTTPProxy: behind HTTPS_PROXY the dial reaches the
// proxy, so the marker judges address literals itself and leaves names to
// the proxy, instead of refusing every redirect because the proxy is on a
// private address.
func TestRedirectThroughHTTPProxy(t *testing.T) {
	var marked []bool
	m := &redirectMarker{
		registryHost: "registry.example",
		proxy:        func(*http.Request) (*url.URL, error) { return url.Parse("http://10.0.0.1:3128") },
		inner: roundTripFunc(func(req *http.Request) (*http.Response, error) {
			v, _ := req.Context().Value(redirectTargetKey{}).(bool)
			marked = append(marked, v)
			return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
		}),
	}
	redirected := func(target string) *http.Request {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Response = &http.Response{StatusCode: http.StatusTemporaryRedirect}
		return req
	}
	for _, target := range []string{"http://127.0.0.2/b", "http://[::1]/b", "http://169.254.169.254/latest", "http://[::ffff:10.1.2.3]/b"} {
		if _, err := m.RoundTrip(redirected(target)); !errors.Is(err, ErrInvalidResponse) {
			t.Errorf("proxied redirect to %s: %v, want ErrInvalidResponse", target, err)
		}
	}
	if _, err := m.RoundTrip(redirected("https://storage.example/b")); err != nil || len(marked) != 1 || marked[0] {
		t.Errorf("proxied redirect to a name: %v, marked %v; want it sent unmarked", err, marked)
	}
	m.proxy = func(*http.Request) (*url.URL, error) { return nil, nil }
	if _, err := m.RoundTrip(redirected("https://storage.example/b")); err != nil || len(marked) != 2 || !marked[1] {
		t.Errorf("direct redirect: %v, marked %v; want it marked for the dial guard", err, marked)
	}
}
