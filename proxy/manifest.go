package proxy

import (
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/internal/oci"
	"github.com/pullbroker/pullbroker/tags"
)

// serveManifest answers a manifest by tag or digest with what the tag
// policy decides; the bytes are served exactly as the upstream sent them.
func (h *Handler) serveManifest(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	ans, err := h.tags.Manifest(r.Context(), rt.image(), acceptedTypes(r))
	if err != nil {
		writeError(w, r, fromUpstream(rt, err))
		return
	}
	kind := "manifest"
	if !rt.isDigest() {
		kind = "tag"
	}
	h.cacheResult(info, kind, rt.registry, ans.Outcome)
	if ans.Outcome == tags.Stale {
		w.Header().Set("Warning", `110 pullbroker "Response is Stale: upstream `+rt.registry+` is unavailable"`)
	}
	m := ans.Manifest
	w.Header().Set("Docker-Content-Digest", m.Digest.String())
	w.Header().Set("Etag", `"`+m.Digest.String()+`"`)
	writeBody(w, r, manifestMediaType(m), m.Body)
}

// image is the route's reference as the tag policy takes it.
func (rt *route) image() tags.Image {
	img := tags.Image{Registry: rt.registry, Repository: rt.repository}
	if rt.isDigest() {
		img.Digest = digest.Digest(rt.reference)
	} else {
		img.Tag = rt.reference
	}
	return img
}

// acceptedTypes lists the media types of the client's Accept headers,
// without parameters; empty means anything.
func acceptedTypes(r *http.Request) []string {
	var out []string
	for _, line := range r.Header.Values("Accept") {
		for _, part := range strings.Split(line, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt == "" {
				continue
			}
			if !slices.Contains(out, mt) {
				out = append(out, mt)
			}
		}
	}
	slices.Sort(out)
	return out
}

// manifestMediaType is the type the upstream sent, or the one the body
// declares when the upstream sent none.
func manifestMediaType(m cache.Manifest) string {
	if m.MediaType != "" {
		return m.MediaType
	}
	if mt := oci.DeclaredMediaType(m.Body); mt != "" {
		return mt
	}
	return "application/vnd.oci.image.manifest.v1+json"
}
