package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

// Route kinds.
const (
	kindBase      = "base"
	kindCatalog   = "catalog"
	kindManifest  = "manifest"
	kindBlob      = "blob"
	kindTags      = "tags"
	kindReferrers = "referrers"
	kindUpload    = "upload"
)

// route is a parsed /v2 request: which upstream, which repository there,
// and what is asked for.
type route struct {
	kind       string
	registry   string // the upstream's canonical Name
	repository string // as the upstream names it ("library/nginx")
	reference  string // tag or digest, for manifests, blobs and referrers
	name       string // the repository as the client named it in the path
	upstream   config.Upstream
	// mirrorForm is true for containerd's /v2/<repo>/...?ns=<registry>.
	mirrorForm bool
}

func (rt *route) describe() string {
	switch rt.kind {
	case kindManifest:
		if rt.isDigest() {
			return fmt.Sprintf("manifest %s@%s", rt.repository, rt.reference)
		}
		return fmt.Sprintf("manifest %s:%s", rt.repository, rt.reference)
	case kindBlob:
		return fmt.Sprintf("blob %s in %s", rt.reference, rt.repository)
	}
	return "repository " + rt.repository
}

// isDigest reports whether the reference is a digest rather than a tag.
func (rt *route) isDigest() bool { return strings.Contains(rt.reference, ":") }

// parseRoute splits a request into a route. It never lets a client name a
// host that is not a configured upstream.
func parseRoute(cfg *config.Config, r *http.Request) (*route, *apiError) {
	// An encoded slash would be decoded into a path separator the client
	// did not write; the spec's name grammar has no room for one.
	if strings.Contains(strings.ToLower(r.URL.EscapedPath()), "%2f") {
		return nil, newAPIError(http.StatusBadRequest, v2.ErrorCodeNameInvalid,
			"%s: an encoded slash (%%2F) is not allowed in a repository name", r.URL.EscapedPath())
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if r.URL.Path == "/v2" || r.URL.Path == "/v2/" {
		return &route{kind: kindBase}, nil
	}
	if p == r.URL.Path {
		return nil, newAPIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "%s is not a registry API path", r.URL.Path)
	}
	if p == "_catalog" {
		return &route{kind: kindCatalog}, nil
	}

	rt := &route{}
	var name string
	switch {
	case strings.HasSuffix(p, "/tags/list"):
		rt.kind, name = kindTags, strings.TrimSuffix(p, "/tags/list")
	default:
		var ok bool
		name, rt.kind, rt.reference, ok = splitResource(p)
		if !ok {
			return nil, newAPIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "%s is not a registry API path", r.URL.Path)
		}
	}
	if rt.kind == kindUpload {
		return rt, nil
	}
	if err := rt.resolveName(cfg, name, r.URL.Query()); err != nil {
		return nil, err
	}
	return rt, rt.validateReference()
}

// splitResource finds the last /manifests/, /blobs/ or /referrers/ segment:
// references never contain '/', so the last one is the route even when a
// repository path itself has a component called "manifests".
func splitResource(p string) (name, kind, ref string, ok bool) {
	best := -1
	for _, seg := range []struct{ marker, kind string }{
		{"/manifests/", kindManifest}, {"/blobs/", kindBlob}, {"/referrers/", kindReferrers},
	} {
		if i := strings.LastIndex(p, seg.marker); i > best {
			best, kind, ref = i, seg.kind, p[i+len(seg.marker):]
		}
	}
	if best <= 0 {
		return "", "", "", false
	}
	name = p[:best]
	if kind == kindBlob && (ref == "uploads" || strings.HasPrefix(ref, "uploads/")) {
		return name, kindUpload, "", true
	}
	if ref == "" || strings.Contains(ref, "/") {
		return "", "", "", false
	}
	return name, kind, ref, true
}

// resolveName picks the upstream and repository under the proxy's naming
// rules (tags.ResolveName).
func (rt *route) resolveName(cfg *config.Config, name string, q url.Values) *apiError {
	u, repo, err := tags.ResolveName(cfg, name, q.Get("ns"))
	if err != nil {
		return nameError(err)
	}
	rt.registry, rt.repository, rt.upstream, rt.mirrorForm = u.Name, repo, u, q.Get("ns") != ""
	rt.name = name
	return nil
}

func (rt *route) validateReference() *apiError {
	switch rt.kind {
	case kindBlob, kindReferrers:
		if _, err := digest.Parse(rt.reference); err != nil {
			return newAPIError(http.StatusBadRequest, v2.ErrorCodeDigestInvalid, "%q is not a valid digest: %v", rt.reference, err)
		}
	case kindManifest:
		if rt.isDigest() {
			if _, err := digest.Parse(rt.reference); err != nil {
				return newAPIError(http.StatusBadRequest, v2.ErrorCodeDigestInvalid, "%q is not a valid digest: %v", rt.reference, err)
			}
		} else if !validTag(rt.reference) {
			return newAPIError(http.StatusBadRequest, v2.ErrorCodeTagInvalid, "%q is not a valid tag", rt.reference)
		}
	}
	return nil
}

func validTag(tag string) bool {
	return len(tag) <= 128 && reference.TagRegexp.FindString(tag) == tag
}
