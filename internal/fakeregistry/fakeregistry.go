// Package fakeregistry is an in-process upstream registry for tests:
// go-containerregistry's in-memory pkg/registry behind the parts of a real
// registry that a pull-through proxy has to cope with.
//
//   - Authentication: none, Basic on every request (WithBasic), or the
//     Bearer token dance (WithBearer) with the token endpoint at /token on
//     the registry's own listener (go-containerregistry refuses a loopback
//     realm on any other host:port). Tokens are scoped to one repository.
//   - Blob storage on another host (WithCDN): blob GETs are redirected (307)
//     to a server on 127.0.0.2 that fails the test on any Authorization
//     header, so credentials leaking across hosts are caught.
//   - Blobs belong to repositories, as in distribution: a blob pushed with
//     Push or PushIndex is answered only in the repositories it was pushed to
//     (404 BLOB_UNKNOWN elsewhere). go-containerregistry's registry alone
//     serves every blob in every repository.
//   - Paginated tag lists carry a Link header to the next page, as an
//     absolute URL on the registry's own host.
//
// Every request is recorded (Requests, Count, Pings), connections are
// counted (Connections), and an override hook (SetOverride) can answer any
// request itself: corrupt bytes, errors, slow bodies.
//
// Content is pushed with Push, PushIndex, PushRandom and PutManifest, which
// write straight into the in-memory registry: they bypass the middleware
// and are not counted.
package fakeregistry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type authMode int

const (
	authNone   authMode = iota
	authBasic           // Basic on every request
	authBearer          // token dance; the token endpoint checks Basic credentials
)

// Option configures a Registry.
type Option func(*Registry)

// WithBasic requires Basic authentication with user and password on every
// request.
func WithBasic(user, password string) Option {
	return func(f *Registry) { f.mode, f.user, f.password = authBasic, user, password }
}

// WithBearer requires a Bearer token on every request. Tokens come from
// /token on the same listener, which checks user and password (Basic) and
// grants the one repository of the pull scope asked for.
func WithBearer(user, password string) Option {
	return func(f *Registry) { f.mode, f.user, f.password = authBearer, user, password }
}

// WithCDN redirects blob GETs (307) to blob storage on 127.0.0.2, which
// fails the test on any Authorization header. The test is skipped where
// that address cannot be bound.
func WithCDN() Option { return func(f *Registry) { f.wantCDN = true } }

// WithRegistryOptions passes options to go-containerregistry's registry,
// such as registry.WithReferrersSupport(true).
func WithRegistryOptions(opts ...registry.Option) Option {
	return func(f *Registry) { f.registryOpts = append(f.registryOpts, opts...) }
}

// Request is one request the registry's listener received.
type Request struct {
	Method   string
	Path     string
	RawQuery string
}

// String is "METHOD /path".
func (r Request) String() string { return r.Method + " " + r.Path }

// Registry is a running fake upstream. Its methods are safe for concurrent
// use.
type Registry struct {
	t            testing.TB
	registryOpts []registry.Option
	registry     http.Handler // go-containerregistry's, without middleware
	srv          *httptest.Server
	conns        atomic.Int64
	mode         authMode
	user         string
	wantCDN      bool
	cdn          *httptest.Server

	mu       sync.Mutex
	password string // accepted password; see SetPassword
	// overlap are further accepted passwords, as during a rotation in
	// which the old and the new credential are both valid.
	overlap []string
	// uses counts the requests (token requests included) that presented
	// each password.
	uses     map[string]int
	tokens   map[string]string // issued token -> repository it grants
	requests []Request         // every request, token requests included
	scopes   []string          // scope parameter of every token request
	cdnHits  int
	override func(w http.ResponseWriter, r *http.Request) bool
	// blobRepos maps a pushed blob's digest to the repositories holding it.
	blobRepos map[string]map[string]bool
}

// New starts a registry on 127.0.0.1 (and its CDN on 127.0.0.2 with
// WithCDN); both stop when the test ends.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	f := &Registry{
		t:         t,
		tokens:    map[string]string{},
		blobRepos: map[string]map[string]bool{},
	}
	for _, o := range opts {
		o(f)
	}
	f.registry = registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, f.registryOpts...)...)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Listener = &countingListener{Listener: f.srv.Listener, accepted: &f.conns}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	if f.wantCDN {
		f.startCDN()
	}
	return f
}

// URL is the registry's base URL, "http://127.0.0.1:PORT".
func (f *Registry) URL() string { return f.srv.URL }

// Host is the registry's "127.0.0.1:PORT".
func (f *Registry) Host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

// Authenticator returns the credentials the registry accepts now, or
// authn.Anonymous when it requires none.
func (f *Registry) Authenticator() authn.Authenticator {
	if f.mode == authNone {
		return authn.Anonymous
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return authn.FromConfig(authn.AuthConfig{Username: f.user, Password: f.password})
}

// Close stops the registry and its CDN: the upstream goes down. Later
// requests are refused at connect.
func (f *Registry) Close() {
	f.srv.Close()
	f.CloseCDN()
}

// CloseCDN stops the blob storage only.
func (f *Registry) CloseCDN() {
	if f.cdn != nil {
		f.cdn.Close()
	}
}

// SetOverride installs a hook that sees every request to the registry's
// listener first (token requests included, before authentication) and may
// answer it itself by returning true. nil removes it. Requests to the CDN
// do not pass through it.
func (f *Registry) SetOverride(o func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.override = o
	f.mu.Unlock()
}

// SetPassword rotates the password the registry accepts.
func (f *Registry) SetPassword(p string) { f.SetPasswords(p) }

// SetPasswords makes the registry accept current and, during a rotation,
// the overlapping others too.
func (f *Registry) SetPasswords(current string, overlap ...string) {
	f.mu.Lock()
	f.password, f.overlap = current, overlap
	f.mu.Unlock()
}

// PasswordUses returns how many requests presented password p.
func (f *Registry) PasswordUses(p string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.uses[p]
}

// acceptsLocked checks Basic credentials and counts the password's use;
// f.mu is held.
func (f *Registry) acceptsLocked(user, pass string, ok bool) bool {
	if !ok {
		return false
	}
	if f.uses == nil {
		f.uses = map[string]int{}
	}
	f.uses[pass]++
	return user == f.user && (pass == f.password || slices.Contains(f.overlap, pass))
}

// RevokeTokens makes every issued token invalid, as if they had expired.
func (f *Registry) RevokeTokens() {
	f.mu.Lock()
	f.tokens = map[string]string{}
	f.mu.Unlock()
}

// Requests returns every request the listener received so far, in order.
func (f *Registry) Requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Request(nil), f.requests...)
}

// Count returns how many requests had method ("" for any) and a path
// containing pathSubstring.
func (f *Registry) Count(method, pathSubstring string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if (method == "" || r.Method == method) && strings.Contains(r.Path, pathSubstring) {
			n++
		}
	}
	return n
}

// Pings returns how many API version checks (GET /v2/) were received.
func (f *Registry) Pings() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.requests {
		if r.Method == http.MethodGet && r.Path == "/v2/" {
			n++
		}
	}
	return n
}

// Total returns how many requests the listener received.
func (f *Registry) Total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// Connections returns how many connections the listener accepted.
func (f *Registry) Connections() int64 { return f.conns.Load() }

// TokenScopes returns the scope parameter of every token request.
func (f *Registry) TokenScopes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.scopes...)
}

// CDNRequests returns how many requests reached the blob storage.
func (f *Registry) CDNRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cdnHits
}

// ResetCounts forgets the requests, token scopes and CDN hits recorded so
// far (not the connection count).
func (f *Registry) ResetCounts() {
	f.mu.Lock()
	f.requests, f.scopes, f.cdnHits = nil, nil, 0
	f.mu.Unlock()
}

// WriteError answers with an OCI error body.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
}

// ParseError returns the code and message of the first error of an OCI
// error body ({"errors":[{"code","message","detail"}]}).
func ParseError(body []byte) (code, message string, err error) {
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		return "", "", fmt.Errorf("not an OCI error body: %w", err)
	}
	if len(e.Errors) == 0 {
		return "", "", errors.New("OCI error body without errors")
	}
	return e.Errors[0].Code, e.Errors[0].Message, nil
}

// countingListener counts accepted connections, so tests can prove that a
// call opened none.
type countingListener struct {
	net.Listener
	accepted *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func (f *Registry) startCDN() {
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
		f.registry.ServeHTTP(w, r) // blob storage needs no registry auth
	}))
	f.cdn.Listener.Close()
	f.cdn.Listener = l
	f.cdn.Start()
	f.t.Cleanup(f.cdn.Close)
}

func (f *Registry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, Request{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery})
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
	repo, kind, ref := splitPath(r.URL.Path)
	if kind == "blobs" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		if !f.holdsBlob(repo, ref) {
			WriteError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
			return
		}
		if f.cdn != nil && r.Method == http.MethodGet {
			http.Redirect(w, r, f.cdn.URL+r.URL.Path+"?sig=signed", http.StatusTemporaryRedirect)
			return
		}
	}
	if kind == "tags" && r.Method == http.MethodGet {
		f.serveTags(w, r, repo)
		return
	}
	f.registry.ServeHTTP(w, r)
}

// splitPath splits /v2/<repo>/<kind>/<ref> (kind: manifests, blobs, tags,
// referrers); kind is "" for other paths.
func splitPath(p string) (repo, kind, ref string) {
	p = strings.TrimPrefix(p, "/v2/")
	for _, k := range []string{"manifests", "blobs", "tags", "referrers"} {
		if i := strings.LastIndex(p, "/"+k+"/"); i > 0 {
			return p[:i], k, p[i+len(k)+2:]
		}
	}
	return "", "", ""
}

func (f *Registry) holdsBlob(repo, dgst string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	repos, known := f.blobRepos[dgst]
	return !known || repos[repo]
}

func (f *Registry) authorized(w http.ResponseWriter, r *http.Request) bool {
	switch f.mode {
	case authBasic:
		user, pass, ok := r.BasicAuth()
		f.mu.Lock()
		good := f.acceptsLocked(user, pass, ok)
		f.mu.Unlock()
		if !good {
			w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
			WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
	case authBearer:
		auth := r.Header.Get("Authorization")
		repo, _, _ := splitPath(r.URL.Path)
		f.mu.Lock()
		granted, ok := f.tokens[strings.TrimPrefix(auth, "Bearer ")]
		f.mu.Unlock()
		if !strings.HasPrefix(auth, "Bearer ") || !ok || (repo != "" && granted != repo) {
			challenge := fmt.Sprintf(`Bearer realm="%s/token",service="fake"`, f.srv.URL)
			if repo != "" {
				challenge += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
			}
			w.Header().Set("WWW-Authenticate", challenge)
			WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
			return false
		}
	}
	return true
}

func (f *Registry) serveToken(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	scope := r.URL.Query().Get("scope")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scopes = append(f.scopes, scope)
	if !f.acceptsLocked(user, pass, ok) {
		WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "bad credentials")
		return
	}
	var repo string
	if parts := strings.Split(scope, ":"); len(parts) == 3 && parts[0] == "repository" && parts[2] == "pull" {
		repo = parts[1]
	}
	token := fmt.Sprintf("token-%d-%s", len(f.tokens), strings.ReplaceAll(repo, "/", "_"))
	f.tokens[token] = repo
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": token, "expires_in": 300})
}

// serveTags applies n and last to the full tag list and, when a page is
// cut short, links the next one as distribution does.
func (f *Registry) serveTags(w http.ResponseWriter, r *http.Request, repo string) {
	full := httptest.NewRecorder()
	req := r.Clone(r.Context())
	req.URL.RawQuery = ""
	f.registry.ServeHTTP(full, req)
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if full.Code != http.StatusOK || json.Unmarshal(full.Body.Bytes(), &list) != nil {
		copyResponse(w, full)
		return
	}
	sort.Strings(list.Tags)
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		list.Tags = list.Tags[sort.Search(len(list.Tags), func(i int) bool { return list.Tags[i] > last }):]
	}
	if s := q.Get("n"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			WriteError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "invalid n")
			return
		}
		if n < len(list.Tags) {
			list.Tags = list.Tags[:n]
			if n > 0 {
				next := url.Values{"n": {s}, "last": {list.Tags[n-1]}}
				w.Header().Set("Link", fmt.Sprintf(`<%s/v2/%s/tags/list?%s>; rel="next"`, f.srv.URL, repo, next.Encode()))
			}
		}
	}
	if list.Tags == nil {
		list.Tags = []string{}
	}
	body, _ := json.Marshal(list)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// PushRandom pushes a random image (two layers of 512 bytes) as repo:tag
// and returns it.
func (f *Registry) PushRandom(repo, tag string) v1.Image {
	f.t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		f.t.Fatal(err)
	}
	f.Push(repo, tag, img)
	return img
}

// RandomIndex builds a multi-platform index of one random image per
// platform, each with two 4 KiB layers and its platform in both the index
// descriptor and the image config. indexType is types.OCIImageIndex (OCI
// images and layers) or types.DockerManifestList (Docker ones).
func RandomIndex(t testing.TB, indexType types.MediaType, platforms ...v1.Platform) v1.ImageIndex {
	t.Helper()
	base, layerType := empty.Image, types.DockerLayer
	if indexType == types.OCIImageIndex {
		base = mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1)
		layerType = types.OCILayer
	}
	idx := mutate.IndexMediaType(empty.Index, indexType)
	for _, p := range platforms {
		var layers []v1.Layer
		for range 2 {
			l, err := random.Layer(4<<10, layerType)
			if err != nil {
				t.Fatal(err)
			}
			layers = append(layers, l)
		}
		img, err := mutate.AppendLayers(base, layers...)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cfg = cfg.DeepCopy()
		cfg.OS, cfg.Architecture, cfg.Variant = p.OS, p.Architecture, p.Variant
		if img, err = mutate.ConfigFile(img, cfg); err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx
}

// Push writes img as repo:tag, and records that repo holds its blobs.
func (f *Registry) Push(repo, tag string, img v1.Image) {
	f.t.Helper()
	f.seed(repo, tag, func(ref name.Reference) error { return remote.Write(ref, img) })
	f.recordImageBlobs(repo, img)
}

// PushIndex writes idx and every image in it as repo:tag, and records
// that repo holds their blobs.
func (f *Registry) PushIndex(repo, tag string, idx v1.ImageIndex) {
	f.t.Helper()
	f.seed(repo, tag, func(ref name.Reference) error { return remote.WriteIndex(ref, idx) })
	f.recordIndexBlobs(repo, idx)
}

// PutManifest stores raw manifest bytes under repo:ref (a tag or digest)
// with the given Content-Type, exactly as a client push would.
func (f *Registry) PutManifest(repo, ref, mediaType string, body []byte) {
	f.t.Helper()
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	rec := httptest.NewRecorder()
	f.registry.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		f.t.Fatalf("PUT manifest %s:%s: status %d: %s", repo, ref, rec.Code, rec.Body)
	}
}

// seed runs push for repo:tag against the bare in-memory registry on a
// listener of its own, bypassing the middleware and its counters.
func (f *Registry) seed(repo, tag string, push func(name.Reference) error) {
	f.t.Helper()
	srv := httptest.NewServer(f.registry)
	defer srv.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := push(ref); err != nil {
		f.t.Fatalf("pushing %s:%s to the fake registry: %v", repo, tag, err)
	}
}

func (f *Registry) recordImageBlobs(repo string, img v1.Image) {
	f.t.Helper()
	layers, err := img.Layers()
	if err != nil {
		f.t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		f.t.Fatal(err)
	}
	digests := []string{cfg.String()}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			f.t.Fatal(err)
		}
		digests = append(digests, d.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range digests {
		if f.blobRepos[d] == nil {
			f.blobRepos[d] = map[string]bool{}
		}
		f.blobRepos[d][repo] = true
	}
}

func (f *Registry) recordIndexBlobs(repo string, idx v1.ImageIndex) {
	f.t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, desc := range im.Manifests {
		if desc.MediaType.IsIndex() {
			child, err := idx.ImageIndex(desc.Digest)
			if err != nil {
				f.t.Fatal(err)
			}
			f.recordIndexBlobs(repo, child)
			continue
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			f.t.Fatal(err)
		}
		f.recordImageBlobs(repo, img)
	}
}
