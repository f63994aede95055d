package oci

import "testing"

func TestIsManifestMediaType(t *testing.T) {
	for _, mt := range ManifestMediaTypes() {
		if !IsManifestMediaType(mt) {
			t.Errorf("%s is in the Accept list but not a manifest type", mt)
		}
	}
	for mt, want := range map[string]bool{
		"application/vnd.oci.image.manifest.v1+json; charset=utf-8": true,
		"application/json":         false,
		"text/html; charset=utf-8": false,
		"application/vnd.docker.distribution.manifest.v1+prettyjws": false,
		"application/vnd.oci.image.config.v1+json":                  false,
		"": false,
	} {
		if got := IsManifestMediaType(mt); got != want {
			t.Errorf("IsManifestMediaType(%q) = %v, want %v", mt, got, want)
		}
	}
}

func TestManifestMediaTypesIsAFreshSlice(t *testing.T) {
	a := ManifestMediaTypes()
	a[0] = "changed"
	if ManifestMediaTypes()[0] == "changed" {
		t.Error("a caller's change leaked into the shared list")
	}
}

func TestDeclaredMediaType(t *testing.T) {
	for body, want := range map[string]string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}`: "application/vnd.oci.image.index.v1+json",
		`{"schemaVersion":2}`: "",
		`<html></html>`:       "",
	} {
		if got := DeclaredMediaType([]byte(body)); got != want {
			t.Errorf("DeclaredMediaType(%s) = %q, want %q", body, got, want)
		}
	}
}
