package proxy_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

// pullRef parses an image reference through the proxy in prefix form:
// <proxy>/<upstream>/<repo>:<tag>.
func (e *env) pullRef(repoTag string) name.Reference {
	e.t.Helper()
	ref, err := name.ParseReference(e.host()+"/"+upstreamName+"/"+repoTag, name.Insecure)
	if err != nil {
		e.t.Fatal(err)
	}
	return ref
}

// pullImage reads every blob of img through the proxy with ggcr's remote
// and checks each against the upstream's copy.
func pullImage(t *testing.T, pulled, want v1.Image) {
	t.Helper()
	cfg, err := pulled.RawConfigFile()
	if err != nil {
		t.Fatalf("config through the proxy: %v", err)
	}
	wantCfg, _ := want.RawConfigFile()
	sameBytes(t, "config", cfg, wantCfg)
	layers, err := pulled.Layers()
	if err != nil {
		t.Fatal(err)
	}
	wantLayers, _ := want.Layers()
	if len(layers) != len(wantLayers) {
		t.Fatalf("%d layers through the proxy, want %d", len(layers), len(wantLayers))
	}
	for i, l := range layers {
		got := readLayer(t, l)
		sameBytes(t, "layer "+strconv.Itoa(i), got, readLayer(t, wantLayers[i]))
	}
}

func readLayer(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc) // remote layers verify their digest at EOF
	if err != nil {
		t.Fatalf("reading layer: %v", err)
	}
	return b
}

// TestPullImage pulls a multi-layer image with go-containerregistry's
// remote by prefix form and compares every byte with the upstream; each
// blob and manifest costs one upstream request, and a second pull none.
func TestPullImage(t *testing.T) {
	forEachSetup(t, func(t *testing.T, e *env, viaCDN bool) {
		img, err := random.Image(64<<10, 3)
		if err != nil {
			t.Fatal(err)
		}
		e.up.Push("team/app", "v1", img)
		raw, dgst, mediaType := manifestOf(t, img)

		desc, err := remote.Get(e.pullRef("team/app:v1"))
		if err != nil {
			t.Fatal(err)
		}
		if desc.Digest.String() != dgst.String() || string(desc.MediaType) != mediaType || !bytes.Equal(desc.Manifest, raw) {
			t.Errorf("manifest through the proxy: digest %s, type %s, %d bytes; want %s, %s, %d bytes",
				desc.Digest, desc.MediaType, len(desc.Manifest), dgst, mediaType, len(raw))
		}
		pulled, err := desc.Image()
		if err != nil {
			t.Fatal(err)
		}
		pullImage(t, pulled, img)

		for _, d := range blobsOf(t, img) {
			if n := e.up.Count(http.MethodGet, "/blobs/"+d.String()); n != 1 {
				t.Errorf("upstream blob GETs of %s = %d, want 1", d, n)
			}
		}
		if heads, byDigest, byTag := e.up.Count(http.MethodHead, "/manifests/v1"), e.up.Count(http.MethodGet, "/manifests/"+dgst.String()), e.up.Count(http.MethodGet, "/manifests/v1"); heads != 1 || byDigest != 1 || byTag != 0 {
			t.Errorf("upstream manifest requests: %d HEAD by tag, %d GET by digest, %d GET by tag; want 1, 1, 0", heads, byDigest, byTag)
		}
		if viaCDN {
			if n := e.up.CDNRequests(); n != len(blobsOf(t, img)) {
				t.Errorf("CDN served %d blobs, want %d", n, len(blobsOf(t, img)))
			}
			if scopes := e.up.TokenScopes(); len(scopes) != 1 || scopes[0] != "repository:team/app:pull" {
				t.Errorf("token requests %q, want one for repository:team/app:pull", scopes)
			}
		}
		t.Logf("cold pull of %d blobs: %d upstream requests, %d to the CDN", len(blobsOf(t, img)), e.up.Total(), e.up.CDNRequests())

		e.up.ResetCounts()
		again, err := remote.Image(e.pullRef("team/app:v1"))
		if err != nil {
			t.Fatal(err)
		}
		pullImage(t, again, img)
		if n := e.up.Total() + e.up.CDNRequests(); n != 0 {
			t.Errorf("a second pull within the tag TTL made %d upstream requests (%v), want 0", n, e.up.Requests())
		}
	})
}

// TestPullMultiArch pulls an OCI index and a Docker manifest list, then
// each platform's image, and checks bytes, media types and that every
// manifest and blob was fetched from the upstream exactly once.
func TestPullMultiArch(t *testing.T) {
	platforms := []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64"},
		{OS: "linux", Architecture: "arm", Variant: "v7"},
	}
	for _, indexType := range []types.MediaType{types.OCIImageIndex, types.DockerManifestList} {
		t.Run(string(indexType), func(t *testing.T) {
			e := newEnv(t, "filesystem")
			idx := fakeregistry.RandomIndex(t, indexType, platforms...)
			e.up.PushIndex("team/multi", "v1", idx)
			raw, dgst, mediaType := manifestOf(t, idx)

			pulledIdx, err := remote.Index(e.pullRef("team/multi:v1"))
			if err != nil {
				t.Fatal(err)
			}
			gotRaw, gotDigest, gotType := manifestOf(t, pulledIdx)
			if gotDigest != dgst || gotType != mediaType || !bytes.Equal(gotRaw, raw) {
				t.Errorf("index through the proxy: %s %s, want %s %s (bytes equal: %v)", gotDigest, gotType, dgst, mediaType, bytes.Equal(gotRaw, raw))
			}
			r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/multi/manifests/v1")
			if ct := r.Header.Get("Content-Type"); ct != mediaType {
				t.Errorf("index Content-Type %q, want %q", ct, mediaType)
			}

			im, err := idx.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			for _, child := range im.Manifests {
				want, err := idx.Image(child.Digest)
				if err != nil {
					t.Fatal(err)
				}
				pulled, err := remote.Image(e.pullRef("team/multi:v1"), remote.WithPlatform(*child.Platform))
				if err != nil {
					t.Fatalf("pulling %s: %v", child.Platform, err)
				}
				if d, _ := pulled.Digest(); d != child.Digest {
					t.Errorf("platform %s resolved to %s, want %s", child.Platform, d, child.Digest)
				}
				pullImage(t, pulled, want)
				r := e.do(http.MethodGet, "/v2/"+upstreamName+"/team/multi/manifests/"+child.Digest.String())
				childRaw, _, childType := manifestOf(t, want)
				if ct := r.Header.Get("Content-Type"); ct != childType || !bytes.Equal(r.body, childRaw) {
					t.Errorf("platform %s manifest: Content-Type %q, want %q (bytes equal: %v)", child.Platform, ct, childType, bytes.Equal(r.body, childRaw))
				}
				if n := e.up.Count(http.MethodGet, "/manifests/"+child.Digest.String()); n != 1 {
					t.Errorf("upstream GETs of the %s manifest = %d, want 1", child.Platform, n)
				}
				for _, d := range blobsOf(t, want) {
					if n := e.up.Count(http.MethodGet, "/blobs/"+d.String()); n != 1 {
						t.Errorf("upstream GETs of blob %s (%s) = %d, want 1", d, child.Platform, n)
					}
				}
			}
			if heads, byDigest := e.up.Count(http.MethodHead, "/manifests/v1"), e.up.Count(http.MethodGet, "/manifests/"+dgst.String()); heads != 1 || byDigest != 1 {
				t.Errorf("upstream index requests: %d HEAD by tag, %d GET by digest; want 1 and 1", heads, byDigest)
			}
			t.Logf("%d platforms pulled with %d upstream requests", len(platforms), e.up.Total())
		})
	}
}

// TestNameForms: the prefix form, containerd's mirror form (?ns=) and the
// default upstream name the same cached content, with the upstream's
// headers; HEAD carries the headers and no body.
func TestNameForms(t *testing.T) {
	e := newEnv(t, "inmemory")
	img := blobImage(t, randomBytes(t, 10<<10))
	e.up.Push("team/app", "v1", img)
	raw, dgst, mediaType := manifestOf(t, img)
	layer := blobsOf(t, img)[1]
	layerBytes := readLayer(t, must(img.LayerByDigest(v1.Hash{Algorithm: "sha256", Hex: layer.Encoded()})))

	forms := map[string]func(kind, ref string) string{
		"prefix":  func(kind, ref string) string { return "/v2/" + upstreamName + "/team/app/" + kind + "/" + ref },
		"mirror":  func(kind, ref string) string { return "/v2/team/app/" + kind + "/" + ref + "?ns=" + upstreamName },
		"default": func(kind, ref string) string { return "/v2/team/app/" + kind + "/" + ref },
	}
	for _, form := range []string{"prefix", "mirror", "default"} {
		path := forms[form]
		for _, ref := range []string{"v1", dgst.String()} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				r := e.do(method, path("manifests", ref), "Accept", mediaType)
				what := form + " " + method + " manifest " + ref
				if r.StatusCode != http.StatusOK {
					t.Fatalf("%s: status %d: %s", what, r.StatusCode, r.body)
				}
				if ct, dcd, cl := r.Header.Get("Content-Type"), r.Header.Get("Docker-Content-Digest"), r.Header.Get("Content-Length"); ct != mediaType || dcd != dgst.String() || cl != strconv.Itoa(len(raw)) {
					t.Errorf("%s: Content-Type %q, Docker-Content-Digest %q, Content-Length %q; want %q, %q, %d", what, ct, dcd, cl, mediaType, dgst, len(raw))
				}
				if method == http.MethodGet && !bytes.Equal(r.body, raw) {
					t.Errorf("%s: body differs from the upstream's manifest", what)
				}
				if method == http.MethodHead && len(r.body) != 0 {
					t.Errorf("%s: HEAD has a %d byte body", what, len(r.body))
				}
			}
		}
		r := e.do(http.MethodGet, path("blobs", layer.String()))
		if r.StatusCode != http.StatusOK || r.Header.Get("Docker-Content-Digest") != layer.String() || r.Header.Get("Content-Length") != strconv.Itoa(len(layerBytes)) {
			t.Errorf("%s blob GET: status %d, Docker-Content-Digest %q, Content-Length %q", form, r.StatusCode, r.Header.Get("Docker-Content-Digest"), r.Header.Get("Content-Length"))
		}
		sameBytes(t, form+" blob", r.body, layerBytes)
		r = e.do(http.MethodHead, path("blobs", layer.String()))
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Length") != strconv.Itoa(len(layerBytes)) || len(r.body) != 0 {
			t.Errorf("%s blob HEAD: status %d, Content-Length %q, %d body bytes", form, r.StatusCode, r.Header.Get("Content-Length"), len(r.body))
		}
	}
	// All three forms share one tag record and one copy of each blob.
	if heads, gets, blobGets := e.up.Count(http.MethodHead, "/manifests/"), e.up.Count(http.MethodGet, "/manifests/"), e.up.Count(http.MethodGet, "/blobs/"); heads != 1 || gets != 1 || blobGets != 1 {
		t.Errorf("upstream: %d manifest HEADs, %d manifest GETs, %d blob GETs; want 1, 1, 1 (%v)", heads, gets, blobGets, e.up.Requests())
	}

	// The handler itself writes no body for HEAD (net/http would drop one
	// silently on a real connection).
	for _, p := range []string{forms["prefix"]("manifests", "v1"), forms["prefix"]("blobs", layer.String())} {
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, p, nil))
		if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
			t.Errorf("HEAD %s: status %d, handler wrote %d body bytes", p, rec.Code, rec.Body.Len())
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
