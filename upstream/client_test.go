package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
	"github.com/pullbroker/pullbroker/internal/oci"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func imageFacts(t *testing.T, img v1.Image) (manifest []byte, dgst digest.Digest, mediaType string, layers []v1.Hash) {
	t.Helper()
	manifest, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		h, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, h)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers = append(layers, cfg)
	return manifest, digest.FromBytes(manifest), string(mt), layers
}

// TestBearerUpstreamFullPull walks every call through a token-dance
// upstream and checks that the ping and token exchange happen once per
// repository, not once per request.
func TestBearerUpstreamFullPull(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer, fakeregistry.WithCDN())
	img := f.PushRandom("library/app", "v1")
	f.PushRandom("library/other", "v1")
	raw, dgst, mediaType, blobs := imageFacts(t, img)
	c := newClient(t, f, Options{})

	head, err := c.HeadManifest(ctx, "library/app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if head.Digest != dgst || head.MediaType != mediaType || head.Size != int64(len(raw)) || head.Body != nil {
		t.Errorf("HeadManifest = %+v, want digest %s, media type %s, size %d, no body", head, dgst, mediaType, len(raw))
	}

	for _, ref := range []string{"v1", dgst.String()} {
		m, err := c.GetManifest(ctx, "library/app", ref, nil)
		if err != nil {
			t.Fatalf("GetManifest(%s): %v", ref, err)
		}
		if m.Digest != dgst || m.MediaType != mediaType || !bytes.Equal(m.Body, raw) || m.Size != int64(len(raw)) {
			t.Errorf("GetManifest(%s) = digest %s type %s size %d, want %s %s %d", ref, m.Digest, m.MediaType, m.Size, dgst, mediaType, len(raw))
		}
	}

	for _, h := range blobs {
		d := digest.Digest(h.String())
		size, err := c.HeadBlob(ctx, "library/app", d)
		if err != nil {
			t.Fatalf("HeadBlob(%s): %v", d, err)
		}
		body, getSize, err := c.GetBlob(ctx, "library/app", d)
		if err != nil {
			t.Fatalf("GetBlob(%s): %v", d, err)
		}
		content, err := io.ReadAll(body)
		body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if digest.FromBytes(content) != d || int64(len(content)) != size || getSize != size {
			t.Errorf("blob %s: got %d bytes hashing to %s, HEAD size %d, GET size %d", d, len(content), digest.FromBytes(content), size, getSize)
		}
	}
	if f.CDNRequests() != len(blobs) {
		t.Errorf("CDN served %d blob GETs, want %d (every blob GET redirected)", f.CDNRequests(), len(blobs))
	}

	tags, link, err := c.Tags(ctx, "library/app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(tags), `"v1"`) || link != "" {
		t.Errorf("Tags = %s, link %q", tags, link)
	}

	if got := f.Pings(); got != 1 {
		t.Errorf("pinged %d times for one repository, want 1", got)
	}
	if got := f.TokenScopes(); !slices.Equal(got, []string{"repository:library/app:pull"}) {
		t.Errorf("token requests with scopes %q, want exactly one for repository:library/app:pull", got)
	}

	// A second repository gets its own scope, hence its own ping and token.
	if _, err := c.HeadManifest(ctx, "library/other", "v1", nil); err != nil {
		t.Fatal(err)
	}
	if got := f.Pings(); got != 2 {
		t.Errorf("pinged %d times for two repositories, want 2", got)
	}
	if got := f.TokenScopes(); len(got) != 2 || got[1] != "repository:library/other:pull" {
		t.Errorf("token scopes %q, want a second one for library/other", got)
	}
}

// TestBlobRedirectCarriesNoAuthorization proves that credentials for the
// registry never reach blob storage on another host, for both schemes.
func TestBlobRedirectCarriesNoAuthorization(t *testing.T) {
	for _, mode := range []struct {
		name string
		opt  fakeregistry.Option
	}{{"bearer", withBearer}, {"basic", withBasic}} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := testContext(t)
			f := fakeregistry.New(t, mode.opt, fakeregistry.WithCDN())
			img := f.PushRandom("team/app", "v1")
			_, _, _, blobs := imageFacts(t, img)
			var sawAuthAtRegistry bool
			f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "/blobs/") && r.Header.Get("Authorization") != "" {
					sawAuthAtRegistry = true
				}
				return false
			})
			c := newClient(t, f, Options{})
			body, _, err := c.GetBlob(ctx, "team/app", digest.Digest(blobs[0].String()))
			if err != nil {
				t.Fatal(err)
			}
			content, err := io.ReadAll(body)
			body.Close()
			if err != nil || digest.FromBytes(content).String() != blobs[0].String() {
				t.Fatalf("blob via CDN: %v, digest %s", err, digest.FromBytes(content))
			}
			if !sawAuthAtRegistry {
				t.Error("the registry saw no Authorization on the blob GET: the test proves nothing")
			}
			if f.CDNRequests() != 1 {
				t.Errorf("CDN hits = %d, want 1", f.CDNRequests())
			}
		})
	}
}

func TestBasicUpstream(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBasic)
	img := f.PushRandom("team/app", "v1")
	_, dgst, _, _ := imageFacts(t, img)

	m, err := newClient(t, f, Options{}).GetManifest(ctx, "team/app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != dgst {
		t.Errorf("digest %s, want %s", m.Digest, dgst)
	}

	wrong := newClient(t, f, Options{Authenticator: authn.FromConfig(authn.AuthConfig{Username: testUser, Password: "wrong-password-xyz"})})
	_, err = wrong.GetManifest(ctx, "team/app", "v1", nil)
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusUnauthorized || !slices.Equal(se.Codes, []string{"UNAUTHORIZED"}) {
		t.Fatalf("wrong password: %v, want a 401 StatusError with code UNAUTHORIZED", err)
	}
	if IsUnavailable(err) || errors.Is(err, ErrNotFound) {
		t.Errorf("a 401 is neither unavailable nor not-found: %v", err)
	}
	if strings.Contains(err.Error(), "wrong-password-xyz") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestAnonymousUpstream(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	img := f.PushRandom("app", "latest")
	_, dgst, _, _ := imageFacts(t, img)
	m, err := newClient(t, f, Options{}).HeadManifest(ctx, "app", "latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != dgst {
		t.Errorf("digest %s, want %s", m.Digest, dgst)
	}
}

// TestRotatedCredentials: the Authenticator is asked per Basic request and
// per token exchange, so a rotated secret works without a new Client.
func TestRotatedCredentials(t *testing.T) {
	t.Run("basic", func(t *testing.T) {
		ctx := testContext(t)
		f := fakeregistry.New(t, withBasic)
		f.PushRandom("team/app", "v1")
		auth := &rotatingAuth{password: testPassword}
		c := newClient(t, f, Options{Authenticator: auth})
		for range 3 {
			if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
				t.Fatal(err)
			}
		}
		if auth.callCount() < 3 {
			t.Errorf("authenticator asked %d times for 3 Basic requests", auth.callCount())
		}
		f.SetPassword("rotated")
		auth.set("rotated")
		if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
			t.Fatalf("after rotation: %v", err)
		}
	})
	t.Run("bearer", func(t *testing.T) {
		ctx := testContext(t)
		f := fakeregistry.New(t, withBearer)
		f.PushRandom("team/app", "v1")
		auth := &rotatingAuth{password: testPassword}
		c := newClient(t, f, Options{Authenticator: auth})
		if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
			t.Fatal(err)
		}
		// The token expires and the secret rotates: the 401 makes ggcr's
		// transport fetch a new token with the new secret.
		f.RevokeTokens()
		f.SetPassword("rotated")
		auth.set("rotated")
		if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
			t.Fatalf("after token expiry and rotation: %v", err)
		}
		if got := len(f.TokenScopes()); got != 2 {
			t.Errorf("token requests = %d, want 2", got)
		}
		if got := f.Pings(); got != 1 {
			t.Errorf("pings = %d, want 1: a refresh needs no new transport", got)
		}
	})
}

// TestConcurrentFirstUseSetsUpOneTransport: many callers hitting a new
// repository at once share one ping and one token exchange.
func TestConcurrentFirstUseSetsUpOneTransport(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	c := newClient(t, f, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := c.HeadManifest(ctx, "team/app", "v1", nil)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if pings, tokens := f.Pings(), len(f.TokenScopes()); pings != 1 || tokens != 1 {
		t.Errorf("16 concurrent first calls made %d pings and %d token requests, want 1 and 1", pings, tokens)
	}
}

func TestTransportCacheEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	for _, r := range []string{"a", "b", "c"} {
		f.PushRandom("team/"+r, "v1")
	}
	c := newClient(t, f, Options{TransportCacheSize: 2})
	for _, r := range []string{"a", "b", "a", "c", "a", "b"} {
		if _, err := c.HeadManifest(ctx, "team/"+r, "v1", nil); err != nil {
			t.Fatal(err)
		}
	}
	// a, b set up; a reused; c evicts b; a reused; b set up again.
	if got := f.Pings(); got != 4 {
		t.Errorf("pings = %d, want 4", got)
	}
	if n := c.transports.len(); n != 2 {
		t.Errorf("cache holds %d transports, want 2", n)
	}
}

func TestFailedTransportSetupIsRetried(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/token" {
			fakeregistry.WriteError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "token service down")
			return true
		}
		return false
	})
	c := newClient(t, f, Options{})
	_, err := c.HeadManifest(ctx, "team/app", "v1", nil)
	if !IsUnavailable(err) {
		t.Fatalf("token server 503: %v, want unavailable", err)
	}
	f.SetOverride(nil)
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatalf("after the token server recovered: %v", err)
	}
}

func TestManifestVerification(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	img := f.PushRandom("team/app", "v1")
	raw, dgst, mediaType, _ := imageFacts(t, img)
	tampered := append(bytes.Clone(raw), ' ')

	// serveManifest answers manifest GETs with body, announcing announced.
	serveManifest := func(body []byte, announced string) {
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			w.Header().Set("Content-Type", mediaType)
			if announced != "" {
				w.Header().Set("Docker-Content-Digest", announced)
			}
			w.Write(body)
			return true
		})
	}
	c := newClient(t, f, Options{})

	t.Run("tag, lying Docker-Content-Digest", func(t *testing.T) {
		serveManifest(tampered, dgst.String())
		_, err := c.GetManifest(ctx, "team/app", "v1", nil)
		if !errors.Is(err, oci.ErrDigestMismatch) || IsUnavailable(err) {
			t.Fatalf("got %v, want oci.ErrDigestMismatch (not unavailable)", err)
		}
	})
	t.Run("digest ref, wrong body", func(t *testing.T) {
		serveManifest(tampered, "")
		_, err := c.GetManifest(ctx, "team/app", dgst.String(), nil)
		if !errors.Is(err, oci.ErrDigestMismatch) {
			t.Fatalf("got %v, want oci.ErrDigestMismatch", err)
		}
	})
	t.Run("tag without Docker-Content-Digest", func(t *testing.T) {
		serveManifest(raw, "")
		m, err := c.GetManifest(ctx, "team/app", "v1", nil)
		if err != nil || m.Digest != dgst {
			t.Fatalf("got %v, digest %s; want the computed %s", err, m.Digest, dgst)
		}
	})
	t.Run("media type kept exactly", func(t *testing.T) {
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8")
			w.Write(raw)
			return true
		})
		m, err := c.GetManifest(ctx, "team/app", dgst.String(), nil)
		if err != nil || m.MediaType != "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8" {
			t.Fatalf("got %v, media type %q", err, m.MediaType)
		}
	})
}

func TestManifestTooLarge(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	big := bytes.Repeat([]byte("x"), oci.MaxManifestSize+1)
	c := newClient(t, f, Options{})
	for _, announceLength := range []bool{true, false} {
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			if announceLength {
				w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			} else {
				w.(http.Flusher).Flush() // chunked: no Content-Length
			}
			w.Write(big)
			return true
		})
		_, err := c.GetManifest(ctx, "team/app", "v1", nil)
		if !errors.Is(err, ErrManifestTooLarge) {
			t.Errorf("Content-Length announced %v: got %v, want ErrManifestTooLarge", announceLength, err)
		}
	}
}

func TestHeadManifestFallsBackToGETWithoutDigest(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	img := f.PushRandom("team/app", "v1")
	raw, dgst, _, _ := imageFacts(t, img)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
			w.Header().Set("Content-Length", fmt.Sprint(len(raw)))
			return true // no Docker-Content-Digest
		}
		return false
	})
	m, err := newClient(t, f, Options{}).HeadManifest(ctx, "team/app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != dgst || !bytes.Equal(m.Body, raw) {
		t.Errorf("fallback gave digest %s, body %d bytes; want %s", m.Digest, len(m.Body), dgst)
	}
	if got := f.Count("GET", "/v2/team/app/manifests/v1"); got != 1 {
		t.Errorf("manifest GETs = %d, want 1", got)
	}
}

func TestAcceptHeader(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	f.PushRandom("team/app", "v1")
	var got []string
	var mu sync.Mutex
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			mu.Lock()
			got = append(got, r.Header.Get("Accept"))
			mu.Unlock()
		}
		return false
	})
	c := newClient(t, f, Options{})
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetManifest(ctx, "team/app", "v1", []string{"application/vnd.oci.image.index.v1+json"}); err != nil {
		t.Fatal(err)
	}
	want := []string{strings.Join(oci.ManifestMediaTypes(), ", "), "application/vnd.oci.image.index.v1+json"}
	if !slices.Equal(got, want) {
		t.Errorf("Accept headers %q, want %q", got, want)
	}
}

func TestNotFound(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	c := newClient(t, f, Options{})
	missing := digest.FromString("missing")
	calls := map[string]func() error{
		"unknown tag": func() error { _, err := c.GetManifest(ctx, "team/app", "nope", nil); return err },
		"unknown repo": func() error {
			_, err := c.HeadManifest(ctx, "team/absent", "v1", nil)
			return err
		},
		"unknown blob": func() error { _, _, err := c.GetBlob(ctx, "team/app", missing); return err },
		"unknown blob HEAD": func() error {
			_, err := c.HeadBlob(ctx, "team/app", missing)
			return err
		},
		"tags of unknown repo": func() error { _, _, err := c.Tags(ctx, "team/absent", nil); return err },
	}
	for name, call := range calls {
		err := call()
		if !errors.Is(err, ErrNotFound) || IsUnavailable(err) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
		var se *StatusError
		if !errors.As(err, &se) || se.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %v, want a 404 StatusError", name, err)
		}
	}
	_, err := c.GetManifest(ctx, "team/app", "nope", nil)
	var se *StatusError
	if errors.As(err, &se) && !slices.Equal(se.Codes, []string{"MANIFEST_UNKNOWN"}) {
		t.Errorf("codes %q, want MANIFEST_UNKNOWN", se.Codes)
	}
}

// deadPort returns a loopback port that refuses connections.
func deadPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// hangUpServer accepts connections and closes them without answering.
func hangUpServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	return l.Addr().String()
}

func TestIsUnavailable(t *testing.T) {
	statusUpstream := func(t *testing.T, status int) *Client {
		f := fakeregistry.New(t)
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			fakeregistry.WriteError(w, status, "X", "status")
			return true
		})
		return newClient(t, f, Options{})
	}
	endpointClient := func(t *testing.T, hostPort string, responseTimeout time.Duration) *Client {
		c, err := New(config.Upstream{Name: "dead", Endpoint: "http://" + hostPort,
			DialTimeout: time.Second, ResponseTimeout: responseTimeout}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	slowUpstream := func(t *testing.T) *Client {
		f := fakeregistry.New(t)
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			select {
			case <-r.Context().Done():
			case <-time.After(2 * time.Second):
			}
			return true
		})
		c, err := New(config.Upstream{Name: "slow", Endpoint: f.URL(), DialTimeout: time.Second,
			ResponseTimeout: 100 * time.Millisecond}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cases := []struct {
		name        string
		client      func(t *testing.T) *Client
		unavailable bool
	}{
		{"503", func(t *testing.T) *Client { return statusUpstream(t, 503) }, true},
		{"500", func(t *testing.T) *Client { return statusUpstream(t, 500) }, true},
		{"429", func(t *testing.T) *Client { return statusUpstream(t, 429) }, true},
		{"closed port", func(t *testing.T) *Client { return endpointClient(t, deadPort(t), time.Second) }, true},
		{"connection closed without answer", func(t *testing.T) *Client { return endpointClient(t, hangUpServer(t), time.Second) }, true},
		{"response header timeout", slowUpstream, true},
		{"403", func(t *testing.T) *Client { return statusUpstream(t, 403) }, false},
		{"400", func(t *testing.T) *Client { return statusUpstream(t, 400) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client(t).GetManifest(testContext(t), "team/app", "v1", nil)
			if err == nil {
				t.Fatal("no error")
			}
			if IsUnavailable(err) != tc.unavailable {
				t.Errorf("IsUnavailable(%v) = %v, want %v", err, !tc.unavailable, tc.unavailable)
			}
		})
	}

	t.Run("sentinels", func(t *testing.T) {
		if !IsUnavailable(fmt.Errorf("x: %w", ErrOffline)) || !IsUnavailable(fmt.Errorf("x: %w", ErrCircuitOpen)) {
			t.Error("ErrOffline and ErrCircuitOpen must be unavailable")
		}
		if IsUnavailable(nil) || IsUnavailable(ErrNotFound) || IsUnavailable(oci.ErrDigestMismatch) {
			t.Error("nil, ErrNotFound and oci.ErrDigestMismatch are not unavailable")
		}
	})

	t.Run("caller cancelled", func(t *testing.T) {
		f := fakeregistry.New(t)
		ctx, cancel := context.WithCancel(t.Context())
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path == "/v2/" {
				return false
			}
			cancel()
			<-r.Context().Done()
			return true
		})
		_, err := newClient(t, f, Options{}).GetManifest(ctx, "team/app", "v1", nil)
		if !errors.Is(err, context.Canceled) || IsUnavailable(err) {
			t.Errorf("got %v, want context.Canceled and not unavailable", err)
		}
	})
}

// TestCircuitBreaker: after the threshold of unavailable calls the next
// call fails at once without a connection; after the cool-down one probe
// goes through, and its success closes the circuit.
func TestCircuitBreaker(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	f.PushRandom("team/app", "v1")
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		fakeregistry.WriteError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "down")
		return true
	})
	c := newClient(t, f, Options{CircuitFailureThreshold: 3, CircuitCoolDown: 300 * time.Millisecond})
	for i := range 3 {
		if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); !IsUnavailable(err) || errors.Is(err, ErrCircuitOpen) {
			t.Fatalf("call %d: %v, want an upstream 503", i, err)
		}
	}
	if !c.circuitOpen() {
		t.Fatal("circuit still closed after 3 unavailable calls")
	}
	conns, reqs := f.Connections(), f.Total()
	start := time.Now()
	_, err := c.GetManifest(ctx, "team/app", "v1", nil)
	if !errors.Is(err, ErrCircuitOpen) || !IsUnavailable(err) {
		t.Fatalf("open circuit: %v, want ErrCircuitOpen", err)
	}
	if time.Since(start) > 50*time.Millisecond {
		t.Errorf("an open circuit took %v to refuse", time.Since(start))
	}
	if f.Connections() != conns || f.Total() != reqs {
		t.Error("a call with the circuit open reached the upstream")
	}

	time.Sleep(350 * time.Millisecond)
	f.SetOverride(nil)
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatalf("half-open probe: %v", err)
	}
	if c.circuitOpen() {
		t.Error("circuit still open after a successful probe")
	}
}

func TestOfflineOpensNoConnection(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	c := newClient(t, f, Options{Offline: true})
	d := digest.FromString("x")
	calls := []func() error{
		func() error { _, err := c.HeadManifest(ctx, "team/app", "v1", nil); return err },
		func() error { _, err := c.GetManifest(ctx, "team/app", "v1", nil); return err },
		func() error { _, _, err := c.GetBlob(ctx, "team/app", d); return err },
		func() error { _, err := c.HeadBlob(ctx, "team/app", d); return err },
		func() error { _, _, err := c.Tags(ctx, "team/app", nil); return err },
		func() error { _, _, err := c.Referrers(ctx, "team/app", d, nil); return err },
	}
	for i, call := range calls {
		if err := call(); !errors.Is(err, ErrOffline) || !IsUnavailable(err) {
			t.Errorf("call %d offline: %v, want ErrOffline", i, err)
		}
	}
	if n := f.Connections(); n != 0 {
		t.Errorf("offline client opened %d connections", n)
	}
	if !c.Offline() {
		t.Error("an offline client reports itself online")
	}
	if online := newClient(t, f, Options{}); online.Offline() {
		t.Error("an online client reports itself offline")
	} else if _, err := online.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatalf("online client: %v", err)
	}
}

func TestNewDoesNoNetworkIO(t *testing.T) {
	f := fakeregistry.New(t, withBearer)
	newClient(t, f, Options{})
	if n := f.Connections(); n != 0 {
		t.Errorf("New opened %d connections", n)
	}
	for _, endpoint := range []string{"", "registry.example.com", "ftp://registry.example.com",
		"https://registry.example.com/prefix", "https://user:pw@registry.example.com"} {
		if _, err := New(config.Upstream{Name: "x", Endpoint: endpoint}, Options{}); err == nil {
			t.Errorf("New accepted endpoint %q", endpoint)
		} else if strings.Contains(err.Error(), "pw@") {
			t.Errorf("error repeats credentials: %v", err)
		}
	}
}

func TestInvalidArgumentsSendNothing(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	c := newClient(t, f, Options{})
	for _, call := range []func() error{
		func() error { _, err := c.GetManifest(ctx, "../etc", "v1", nil); return err },
		func() error { _, err := c.GetManifest(ctx, "team/app", "v1?x=1", nil); return err },
		func() error { _, err := c.HeadManifest(ctx, "team/app", "sha256:nothex", nil); return err },
		func() error { _, _, err := c.GetBlob(ctx, "team/app", "sha256:../../x"); return err },
		func() error { _, _, err := c.Tags(ctx, "Team/App", nil); return err },
	} {
		if err := call(); err == nil {
			t.Error("invalid argument accepted")
		}
	}
	if n := f.Total(); n != 0 {
		t.Errorf("invalid arguments caused %d upstream requests", n)
	}
}

// TestHTTPSEndpointNeverFallsBackToHTTP: ggcr would retry a loopback
// registry over plain http; the client must not downgrade.
func TestHTTPSEndpointNeverFallsBackToHTTP(t *testing.T) {
	f := fakeregistry.New(t)
	f.PushRandom("team/app", "v1")
	c, err := New(config.Upstream{Name: "tls", Endpoint: "https://" + f.Host(), DialTimeout: time.Second, ResponseTimeout: time.Second}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.HeadManifest(testContext(t), "team/app", "v1", nil); err == nil {
		t.Fatal("an https endpoint served by plain http answered")
	}
	if n := f.Total(); n != 0 {
		t.Errorf("%d plain-http requests reached the upstream", n)
	}
}

func TestErrorsCarryNoSecrets(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t, withBearer, fakeregistry.WithCDN())
	img := f.PushRandom("team/app", "v1")
	_, _, _, blobs := imageFacts(t, img)
	c := newClient(t, f, Options{})
	if _, err := c.HeadManifest(ctx, "team/app", "v1", nil); err != nil {
		t.Fatal(err)
	}
	// The CDN goes away: the redirect's signed URL must not appear.
	f.CloseCDN()
	_, _, err := c.GetBlob(ctx, "team/app", digest.Digest(blobs[0].String()))
	if !IsUnavailable(err) {
		t.Fatalf("dead CDN: %v, want unavailable", err)
	}
	// The token server fails on a new repository.
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/token" {
			fakeregistry.WriteError(w, http.StatusInternalServerError, "UNKNOWN", "boom")
			return true
		}
		return false
	})
	_, err2 := c.HeadManifest(ctx, "team/other", "v1", nil)
	if !IsUnavailable(err2) {
		t.Fatalf("token server 500: %v, want unavailable", err2)
	}
	for _, e := range []error{err, err2} {
		msg := e.Error()
		for _, secret := range []string{testPassword, "sig=", "token-", "scope="} {
			if strings.Contains(msg, secret) {
				t.Errorf("error %q contains %q", msg, secret)
			}
		}
	}
}

func TestGetBlobContextCancelsBody(t *testing.T) {
	f := fakeregistry.New(t)
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return true
	})
	ctx, cancel := context.WithCancel(t.Context())
	body, size, err := newClient(t, f, Options{}).GetBlob(ctx, "team/app", digest.FromString("x"))
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if size != 1000000 {
		t.Errorf("size %d, want 1000000", size)
	}
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(body); done <- err }()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a cancelled body read ended without error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling ctx did not end the body")
	}
}

func TestTagsPassesPaginationAndLink(t *testing.T) {
	ctx := testContext(t)
	f := fakeregistry.New(t)
	var gotQuery url.Values
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			return false
		}
		gotQuery = r.URL.Query()
		w.Header().Set("Link", `</v2/team/app/tags/list?last=b&n=2>; rel="next"`)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"name":"team/app","tags":["a","b"]}`))
		return true
	})
	body, link, err := newClient(t, f, Options{}).Tags(ctx, "team/app", url.Values{"n": {"2"}, "last": {"0"}, "evil": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != `{"name":"team/app","tags":["a","b"]}` || link != `</v2/team/app/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("body %s link %q", body, link)
	}
	if gotQuery.Encode() != "last=0&n=2" {
		t.Errorf("upstream got query %q, want only n and last", gotQuery.Encode())
	}
}

func TestReferrers(t *testing.T) {
	ctx := testContext(t)
	t.Run("supported", func(t *testing.T) {
		f := fakeregistry.New(t, withBearer, fakeregistry.WithRegistryOptions(registry.WithReferrersSupport(true)))
		img := f.PushRandom("team/app", "v1")
		_, dgst, _, _ := imageFacts(t, img)
		// A referrer: a manifest whose subject is img.
		subRaw, _, _, _ := imageFacts(t, f.PushRandom("team/app", "sig"))
		var m map[string]any
		json.Unmarshal(subRaw, &m)
		rawImg, _ := img.RawManifest()
		m["subject"] = map[string]any{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": dgst.String(), "size": len(rawImg)}
		withSubject, _ := json.Marshal(m)
		f.PutManifest("team/app", "signature", "application/vnd.docker.distribution.manifest.v2+json", withSubject)

		body, ct, err := newClient(t, f, Options{}).Referrers(ctx, "team/app", dgst, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ct != string(types.OCIImageIndex) || !strings.Contains(string(body), digest.FromBytes(withSubject).String()) {
			t.Errorf("referrers %s (%s), want an index naming %s", body, ct, digest.FromBytes(withSubject))
		}
	})
	t.Run("no referrers API", func(t *testing.T) {
		f := fakeregistry.New(t)
		img := f.PushRandom("team/app", "v1")
		_, dgst, _, _ := imageFacts(t, img)
		c := newClient(t, f, Options{})
		_, _, err := c.Referrers(ctx, "team/app", dgst, nil)
		if !errors.Is(err, ErrNotFound) || IsUnavailable(err) {
			t.Errorf("404: got %v, want ErrNotFound", err)
		}
		// Some registries answer unknown routes with a 200 web page.
		f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/referrers/") {
				return false
			}
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte("<html></html>"))
			return true
		})
		if _, _, err := c.Referrers(ctx, "team/app", dgst, nil); !errors.Is(err, ErrNotFound) {
			t.Errorf("200 text/html: got %v, want ErrNotFound", err)
		}
	})
}

// TestSetupSurvivesFirstCallerCancel: the transport set-up belongs to every
// caller waiting for it, so the first caller giving up must not fail the
// others (or cost a second ping).
func TestSetupSurvivesFirstCallerCancel(t *testing.T) {
	f := fakeregistry.New(t, withBearer)
	f.PushRandom("team/app", "v1")
	f.SetOverride(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			time.Sleep(150 * time.Millisecond) // a slow ping
		}
		return false
	})
	c := newClient(t, f, Options{})
	impatient, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	firstErr := make(chan error, 1)
	go func() {
		_, err := c.HeadManifest(impatient, "team/app", "v1", nil)
		firstErr <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if _, err := c.HeadManifest(testContext(t), "team/app", "v1", nil); err != nil {
		t.Fatalf("patient caller: %v", err)
	}
	if err := <-firstErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("impatient caller: %v, want its own deadline", err)
	}
	if got := f.Pings(); got != 1 {
		t.Errorf("pings = %d, want 1", got)
	}
}
