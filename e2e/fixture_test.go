package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// Test content, kept small so the whole package runs in a few minutes on two cores: an image of
// three 2 MB layers and a two-platform index of one 1 MB layer per image, all in one repository.
const (
	appRepo        = "team/app"
	appTag         = "v1"
	appLayers      = 3
	appLayerSize   = 2 << 20
	multiTag       = "multi"
	multiLayers    = 1
	multiLayerSize = 1 << 20
	robotUser      = "pb-robot"
)

// fixture is one test's upstream: a docker-registry behind htpasswd holding the test content, the
// password in a file that only pullbroker's config names, and an admin token file.
type fixture struct {
	t        *testing.T
	upstream *testenv.DockerRegistry
	auth     testenv.BasicAuth
	secrets  *secrets

	passwordFile   string
	adminToken     string
	adminTokenFile string

	// appDigest is team/app:v1; multi is team/app:multi (an OCI index) and its two images.
	appDigest string
	multi     testenv.MultiArchImage
}

// newFixture starts the upstream and pushes the test content with crane.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, secrets: newSecrets()}
	f.auth = testenv.BasicAuth{Username: robotUser, Password: randomSecret("upstream-password")}
	f.adminToken = randomSecret("admin-token")
	f.secrets.add("upstream password", f.auth.Password, f.auth.Username)
	f.secrets.add("admin token", f.adminToken, "")
	dir := t.TempDir()
	f.passwordFile = filepath.Join(dir, "registry-password")
	f.adminTokenFile = filepath.Join(dir, "admin-token")
	writeFile(t, f.passwordFile, f.auth.Password+"\n")
	writeFile(t, f.adminTokenFile, f.adminToken+"\n")

	f.upstream = testenv.RunDockerRegistry(t, testenv.RegistryOptions{Auth: &f.auth})
	start := time.Now()
	f.appDigest = testenv.PushTestImage(t, f.upstream.Addr, appRepo, appTag, appLayers, appLayerSize, &f.auth)
	f.multi = testenv.PushMultiArchIndex(t, f.upstream.Addr, appRepo, multiTag, multiLayers, multiLayerSize, &f.auth)
	t.Logf("upstream %s: pushed %s:%s (%s) and %s:%s (%s) in %v", f.upstream.Addr, appRepo, appTag, f.appDigest,
		appRepo, multiTag, f.multi.Digest, time.Since(start).Round(time.Millisecond))
	return f
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// upstreamConfig is the docker-registry as a pullbroker upstream, reached at endpoint (its own
// address, or a test proxy in front of it).
func (f *fixture) upstreamConfig(endpoint string) upstreamConfig {
	if endpoint == "" {
		endpoint = "http://" + f.upstream.Addr
	}
	return upstreamConfig{Endpoint: endpoint, Username: f.auth.Username, PasswordFile: f.passwordFile}
}

// startPullbroker starts a pullbroker for this fixture; cfg.Upstreams defaults to the registry
// itself and cfg.AdminTokenFile to the fixture's.
func (f *fixture) startPullbroker(cfg pbConfig) *pullbroker {
	f.t.Helper()
	if len(cfg.Upstreams) == 0 {
		cfg.Upstreams = []upstreamConfig{f.upstreamConfig("")}
	}
	if cfg.AdminTokenFile == "" {
		cfg.AdminTokenFile = f.adminTokenFile
	}
	return startPullbroker(f.t, f.secrets, cfg)
}

// upstreamDigest asks the registry itself, with its credentials, what ref ("team/app:v1")
// resolves to: the digest every pull through pullbroker is compared with.
func (f *fixture) upstreamDigest(ref string) string {
	f.t.Helper()
	return testenv.CraneAs(f.t, f.upstream.Addr, f.auth, "digest", "--insecure", f.upstream.Addr+"/"+ref)
}

// upstreamManifest returns the raw manifest of ref from the registry itself.
func (f *fixture) upstreamManifest(ref string) []byte {
	f.t.Helper()
	return []byte(testenv.CraneAs(f.t, f.upstream.Addr, f.auth, "manifest", "--insecure", f.upstream.Addr+"/"+ref))
}

// images are the tags every pull test pulls, with the digest the upstream gives for each.
func (f *fixture) images() map[string]string {
	return map[string]string{
		appRepo + ":" + appTag:   f.upstreamDigest(appRepo + ":" + appTag),
		appRepo + ":" + multiTag: f.upstreamDigest(appRepo + ":" + multiTag),
	}
}

// sortedKeys returns m's keys in order, so tests run and report in a stable order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ociManifest is the part of an image manifest or index the tests read.
type ociManifest struct {
	MediaType string       `json:"mediaType"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"`
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform"`
}

func parseManifest(t *testing.T, raw []byte) ociManifest {
	t.Helper()
	var m ociManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest %s: %v", raw, err)
	}
	return m
}

func (m ociManifest) isIndex() bool { return len(m.Manifests) > 0 }

// blobs are the config and layers of an image manifest.
func (m ociManifest) blobs() []descriptor {
	var out []descriptor
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	return append(out, m.Layers...)
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// fileDigest hashes a file and returns its digest and size.
func fileDigest(t *testing.T, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil)), n
}

// checkSkopeoDir checks a `skopeo copy --all ... dir:` result against the manifest it was copied
// from: an image's manifest is the same bytes, an index's list names the same instances; every
// instance manifest and every blob (config and layers) is there with the digest and size its
// descriptor gives. It returns the number of blobs checked.
func checkSkopeoDir(t *testing.T, dir string, source []byte) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	blobPath := func(d string) string { return filepath.Join(dir, strings.TrimPrefix(d, "sha256:")) }
	want := parseManifest(t, source)
	if !want.isIndex() {
		if got := digestOf(raw); got != digestOf(source) {
			t.Fatalf("skopeo copied manifest %s, want %s", got, digestOf(source))
		}
		return checkBlobFiles(t, want.blobs(), blobPath)
	}
	got := parseManifest(t, raw)
	if len(got.Manifests) != len(want.Manifests) {
		t.Fatalf("skopeo copied an index of %d manifests, want %d:\n%s", len(got.Manifests), len(want.Manifests), raw)
	}
	n := 0
	for i, child := range want.Manifests {
		if got.Manifests[i].Digest != child.Digest {
			t.Fatalf("skopeo copied index entry %d as %s, want %s", i, got.Manifests[i].Digest, child.Digest)
		}
		path := filepath.Join(dir, strings.TrimPrefix(child.Digest, "sha256:")+".manifest.json")
		childRaw, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("index child %s not copied: %v", child.Digest, err)
		}
		if got := digestOf(childRaw); got != child.Digest {
			t.Fatalf("index child %s copied as %s", child.Digest, got)
		}
		n += checkBlobFiles(t, parseManifest(t, childRaw).blobs(), blobPath)
	}
	return n
}

// checkOCILayout checks an OCI image layout (crane pull --format oci) holding want and every
// blob below it.
func checkOCILayout(t *testing.T, dir, want string) int {
	t.Helper()
	blobPath := func(d string) string { return filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")) }
	var index ociManifest
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	index = parseManifest(t, raw)
	found := false
	for _, m := range index.Manifests {
		found = found || m.Digest == want
	}
	if !found {
		t.Fatalf("OCI layout index.json does not name %s:\n%s", want, raw)
	}
	var walk func(d string) int
	walk = func(d string) int {
		n := checkBlobFiles(t, []descriptor{{Digest: d, Size: -1}}, blobPath)
		raw, err := os.ReadFile(blobPath(d))
		if err != nil {
			t.Fatal(err)
		}
		m := parseManifest(t, raw)
		if !m.isIndex() {
			return n + checkBlobFiles(t, m.blobs(), blobPath)
		}
		for _, child := range m.Manifests {
			n += walk(child.Digest)
		}
		return n
	}
	return walk(want)
}

// checkBlobFiles checks that each descriptor's file exists with its digest and size (size -1:
// any). It returns how many it checked.
func checkBlobFiles(t *testing.T, descs []descriptor, path func(digest string) string) int {
	t.Helper()
	for _, d := range descs {
		got, size := fileDigest(t, path(d.Digest))
		if got != d.Digest || (d.Size >= 0 && size != d.Size) {
			t.Fatalf("blob %s (%d bytes) copied as %s (%d bytes)", d.Digest, d.Size, got, size)
		}
	}
	return len(descs)
}

// manifestAccept is what runtimes send when they resolve a tag.
var manifestAccept = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// headManifest sends HEAD for a manifest with client and returns the response (body closed).
func headManifest(t *testing.T, client *http.Client, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodHead, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// get sends a GET with the manifest Accept header and returns the response and its body.
func get(t *testing.T, client *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// ociError is the first error of an OCI error body.
func ociError(t *testing.T, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not an OCI error body: %q (%v)", body, err)
	}
	return e.Errors[0].Code, e.Errors[0].Message
}
