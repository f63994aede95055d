package cache

import (
	"bytes"
	"encoding/json"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzManifestLinks checks, for any manifest body and served media type,
// that storing it never panics, that a stored manifest reads back byte for
// byte, and that it makes its repository hold only what its media type
// lets it reference: config, layers and subject for an image manifest;
// manifests and subject for an index; nothing for anything else. The
// oracle reads the JSON generically, not with the cache's typed parsing.
// The seed corpus runs in every go test; explore with
//
//	go test ./cache -run '^$' -fuzz FuzzManifestLinks -fuzztime 5m
func FuzzManifestLinks(f *testing.F) {
	d1 := digest.FromString("config").String()
	d2 := digest.FromString("layer").String()
	d3 := digest.FromString("elsewhere").String()
	for _, seed := range []struct {
		body   string
		served uint8
	}{
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d1 + `","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + d2 + `","size":5}]}`, 0},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d1 + `","size":2}]}`, 1},
		{`{"schemaVersion":2,"config":{"digest":"` + d1 + `","size":2},"layers":[],"blobs":[{"digest":"` + d3 + `","size":1}]}`, 2},
		{`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` + d1 + `"},"subject":{"digest":"` + d2 + `"},"annotations":{"x":"` + d3 + `"}}`, 3},
		{`{"mediaType":"text/plain","layers":[{"digest":"` + d3 + `"}]}`, 0},
		{`not json`, 0}, {``, 4}, {`{"layers":[{"digest":"sha256:zz"}]}`, 2},
	} {
		f.Add([]byte(seed.body), seed.served)
	}
	servedTypes := []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		mediaTypeDockerManifest, mediaTypeDockerManifestList, ""}
	f.Fuzz(func(t *testing.T, body []byte, served uint8) {
		s, err := New(inmemory.New(), Options{})
		if err != nil {
			t.Fatal(err)
		}
		m := Manifest{Digest: digest.FromBytes(body), MediaType: servedTypes[int(served)%len(servedTypes)], Body: body}
		if err := s.PutManifest(t.Context(), "r.test", "team/app", m); err != nil {
			return
		}
		got, err := s.GetManifest(t.Context(), "r.test", "team/app", m.Digest)
		if err != nil || !bytes.Equal(got.Body, body) {
			t.Fatalf("stored manifest does not read back: %v", err)
		}
		allowed := allowedReferences(m.MediaType, body)
		allowed[m.Digest.String()] = true
		for _, linked := range linkedDigests(t, s) {
			if !allowed[linked] {
				t.Fatalf("manifest (served as %q) linked %s, which its media type does not reference:\n%s", m.MediaType, linked, body)
			}
		}
	})
}

// allowedReferences is the oracle: the digests a manifest may make its
// repository hold, read from the JSON as plain maps. Keys match as Go's
// encoding/json matches them, ignoring case (containerd and distribution
// read manifests with it, so "Config" is the config to them too), and a
// body with several media-type keys may reference what any of them allows.
func allowedReferences(served string, body []byte) map[string]bool {
	out := map[string]bool{}
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		return out
	}
	mediaTypes := []string{}
	for k, v := range doc {
		if mt, ok := v.(string); ok && strings.EqualFold(k, "mediaType") && mt != "" {
			mediaTypes = append(mediaTypes, mt)
		}
	}
	if len(mediaTypes) == 0 {
		mediaTypes = append(mediaTypes, served)
	}
	var fields []string
	for _, mt := range mediaTypes {
		switch mt {
		case ocispec.MediaTypeImageManifest, mediaTypeDockerManifest:
			fields = append(fields, "config", "layers", "subject")
		case ocispec.MediaTypeImageIndex, mediaTypeDockerManifestList:
			fields = append(fields, "manifests", "subject")
		}
	}
	for key, value := range doc {
		if !slices.ContainsFunc(fields, func(f string) bool { return strings.EqualFold(f, key) }) {
			continue
		}
		switch v := value.(type) {
		case map[string]any:
			addDigest(out, v)
		case []any:
			for _, e := range v {
				if m, ok := e.(map[string]any); ok {
					addDigest(out, m)
				}
			}
		}
	}
	return out
}

// addDigest adds a descriptor's digest, its key matched as Go matches it.
func addDigest(out map[string]bool, descriptor map[string]any) {
	for k, v := range descriptor {
		if d, ok := v.(string); ok && strings.EqualFold(k, "digest") {
			out[d] = true
		}
	}
}

// linkedDigests lists every digest the test repository holds a link for.
func linkedDigests(t *testing.T, s *Store) []string {
	t.Helper()
	root := path.Join(repoPath("r.test", "team/app"), "_links")
	algs, err := s.driver.List(t.Context(), root)
	if err != nil {
		return nil
	}
	var out []string
	for _, alg := range algs {
		entries, err := s.driver.List(t.Context(), alg)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			out = append(out, path.Base(alg)+":"+strings.TrimSuffix(path.Base(e), "/"))
		}
	}
	return out
}
