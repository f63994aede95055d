// Package oci holds what the OCI image and distribution specifications
// define that several pullbroker packages need: the manifest media types a
// registry serves and a client asks for, the size bound of a manifest held
// in memory, and the error for content that does not hash to its digest.
package oci

import (
	"encoding/json"
	"errors"
	"mime"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// MaxManifestSize bounds a manifest held in memory: the limit the
// distribution reference implementation applies as well.
const MaxManifestSize = 4 << 20

// ErrDigestMismatch means content did not hash to the digest it was asked
// for or announced with. Such content is never stored or served.
var ErrDigestMismatch = errors.New("content does not match its digest")

// ManifestMediaTypes returns the manifest media types pullbroker accepts,
// index types first: a multi-platform image must resolve to its index, not
// to the one platform's manifest a registry would otherwise pick. It is a
// fresh slice on every call, so callers may append to it.
func ManifestMediaTypes() []string {
	return []string{
		string(types.OCIImageIndex),
		string(types.DockerManifestList),
		string(types.OCIManifestSchema1),
		string(types.DockerManifestSchema2),
	}
}

// IsManifestMediaType reports whether a Content-Type (parameters allowed)
// names one of ManifestMediaTypes.
func IsManifestMediaType(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	m := types.MediaType(mt)
	return m.IsIndex() || m.IsImage()
}

// DeclaredMediaType is the mediaType field a manifest body declares, or ""
// (the field is optional, and the body may not be JSON at all).
func DeclaredMediaType(body []byte) string {
	var m struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &m)
	return m.MediaType
}
