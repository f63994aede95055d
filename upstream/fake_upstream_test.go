package upstream

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullbroker/pullbroker/config"
)

// authMode is how a fakeUpstream wants to be authenticated.
type authMode int

const (
	authNone   authMode = iota
	authBasic           // Basic on every request
	authBearer          // token dance; the token endpoint checks Basic credentials
)

const (
	testUser     = "puller"
	testPassword = "s3cret-password"
)

// countingListener counts accepted connections, so tests can prove that a
// call opened none.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// fakeUpstream is go-containerregistry's in-memory registry behind an
// authentication middleware, optionally redirecting blob GETs to a "CDN"
// on 127.0.0.2 that fails the test on any Authorization header.
type fakeUpstream struct {
	t        *testing.T
	registry http.Handler
	srv      *httptest.Server
	listener *countingListener
	mode     authMode
	cdn      *httptest.Server

	mu       sync.Mutex
	password string            // accepted password; rotatable
	tokens   map[string]string // issued token -> repository it grants
	requests []string          // "METHOD /path" of every request, token requests included
	scopes   []string          // scope parameter of every token request
	cdnHits  int
	// override, when set, may answer a request itself (return true).
	override func(w http.ResponseWriter, r *http.Request) bool
}

type fakeOption func(*fakeUpstream)

// withCDN redirects blob GETs (307) to a server on 127.0.0.2.
func withCDN() fakeOption { return func(f *fakeUpstream) { f.startCDN() } }

// withRegistryOptions passes options to ggcr's registry.
func withRegistryOptions(opts ...registry.Option) fakeOption {
	return func(f *fakeUpstream) {
		f.registry = registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, opts...)...)
	}
}

func newFakeUpstream(t *testing.T, mode authMode, opts ...fakeOption) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{
		t:        t,
		registry: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		mode:     mode,
		password: testPassword,
		tokens:   map[string]string{},
	}
	for _, o := range opts {
		o(f)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.listener = &countingListener{Listener: f.srv.Listener}
	f.srv.Listener = f.listener
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeUpstream) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeUpstream) startCDN() {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		f.t.Skipf("no second loopback address for the blob CDN: %v", err)
	}
	f.cdn = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.cdnHits++
		f.mu.Unlock()
		if auth := r.Header.Get("Authorization"); auth != "" {
			f.t.Errorf("blob CDN received Authorization %q: credentials leaked across hosts", auth)
			http.Error(w, "credentials leaked", http.StatusForbidden)
			return
		}
		if r.URL.Query().Get("sig") != "signed" {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		f.registry.ServeHTTP(w, r) // the registry itself needs no auth
	}))
	f.cdn.Listener.Close()
	f.cdn.Listener = l
	f.cdn.Start()
	f.t.Cleanup(f.cdn.Close)
}

func (f *fakeUpstream) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	override := f.override
	f.mu.Unlock()
	if override != nil && override(w, r) {
		return
	}
	if r.URL.Path == "/token" {
		f.serveToken(w, r)
		return
	}
	if !f.authorized(w, r) {
		return
	}
	if f.cdn != nil && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		http.Redirect(w, r, f.cdn.URL+r.URL.Path+"?sig=signed", http.StatusTemporaryRedirect)
		return
	}
	f.registry.ServeHTTP(w, r)
}

// repoOf extracts the repository of a /v2/<repo>/<kind>/... path.
func repoOf(path string) string {
	p := strings.TrimPrefix(path, "/v2/")
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(p, kind); i >= 0 {
			return p[:i]
		}
	}
	return ""
}

func (f *fakeUpstream) authorized(w http.ResponseWriter, r *http.Request) bool {
	auth := r.Header.Get("Authorization")
	switch f.mode {
	case authBasic:
		user, pass, ok := r.BasicAuth()
		f.mu.Lock()
		good := ok && user == testUser && pass == f.password
		f.mu.Unlock()
		if !good {
			w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
			writeOCIError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
	case authBearer:
		repo := repoOf(r.URL.Path)
		f.mu.Lock()
		granted, ok := f.tokens[strings.TrimPrefix(auth, "Bearer ")]
		f.mu.Unlock()
		if !strings.HasPrefix(auth, "Bearer ") || !ok || (repo != "" && granted != repo) {
			// The realm is on this very listener: ggcr refuses a loopback
			// realm on any other host:port (TESTENV.md).
			challenge := fmt.Sprintf(`Bearer realm="%s/token",service="fake"`, f.srv.URL)
			if repo != "" {
				challenge += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
			}
			w.Header().Set("WWW-Authenticate", challenge)
			writeOCIError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
	}
	return true
}

func (f *fakeUpstream) serveToken(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	scope := r.URL.Query().Get("scope")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scopes = append(f.scopes, scope)
	if !ok || user != testUser || pass != f.password {
		writeOCIError(w, http.StatusUnauthorized, "UNAUTHORIZED", "bad credentials")
		return
	}
	var repo string
	if parts := strings.Split(scope, ":"); len(parts) == 3 && parts[0] == "repository" && parts[2] == "pull" {
		repo = parts[1]
	}
	token := fmt.Sprintf("token-%d-%s", len(f.tokens), strings.ReplaceAll(repo, "/", "_"))
	f.tokens[token] = repo
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": token, "expires_in": 300})
}

func writeOCIError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
}

// setPassword rotates the credential the upstream accepts.
func (f *fakeUpstream) setPassword(p string) {
	f.mu.Lock()
	f.password = p
	f.mu.Unlock()
}

// revokeTokens makes every issued token invalid, as if they had expired.
func (f *fakeUpstream) revokeTokens() {
	f.mu.Lock()
	f.tokens = map[string]string{}
	f.mu.Unlock()
}

func (f *fakeUpstream) setOverride(o func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.override = o
	f.mu.Unlock()
}

// count returns how many requests matched "METHOD /path" exactly, or with
// a prefix ending in '*'.
func (f *fakeUpstream) count(pattern string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r == pattern || (strings.HasSuffix(pattern, "*") && strings.HasPrefix(r, strings.TrimSuffix(pattern, "*"))) {
			n++
		}
	}
	return n
}

func (f *fakeUpstream) tokenScopes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.scopes...)
}

func (f *fakeUpstream) cdnRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cdnHits
}

func (f *fakeUpstream) totalRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// push writes a random image to repo:tag straight into the registry,
// bypassing the middleware and its counters.
func (f *fakeUpstream) push(repoTag string) v1.Image {
	f.t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		f.t.Fatal(err)
	}
	f.write(repoTag, img)
	return img
}

func (f *fakeUpstream) write(repoTag string, img v1.Image) {
	f.t.Helper()
	seed := httptest.NewServer(f.registry)
	defer seed.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(seed.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		f.t.Fatalf("seeding %s: %v", repoTag, err)
	}
}

// upstreamConfig is the configuration of a client for the fake.
func (f *fakeUpstream) upstreamConfig() config.Upstream {
	return config.Upstream{
		Name:            "fake.example",
		Endpoint:        f.srv.URL,
		DialTimeout:     time.Second,
		ResponseTimeout: 2 * time.Second,
	}
}

func (f *fakeUpstream) newClient(opts Options) *Client {
	f.t.Helper()
	if opts.Authenticator == nil && f.mode != authNone {
		opts.Authenticator = authn.FromConfig(authn.AuthConfig{Username: testUser, Password: testPassword})
	}
	c, err := New(f.upstreamConfig(), opts)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// rotatingAuth is an Authenticator whose password can change, counting
// how often it is asked.
type rotatingAuth struct {
	mu       sync.Mutex
	password string
	calls    int
}

func (a *rotatingAuth) Authorization() (*authn.AuthConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	return &authn.AuthConfig{Username: testUser, Password: a.password}, nil
}

func (a *rotatingAuth) set(p string) {
	a.mu.Lock()
	a.password = p
	a.mu.Unlock()
}

func (a *rotatingAuth) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}
