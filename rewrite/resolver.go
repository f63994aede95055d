package rewrite

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/internal/oci"
)

// Resolver tells which digest a tag currently stands for. The rewriter asks
// it about the rewritten reference, so an implementation that asks the proxy
// gets the proxy's answer: its pin when the tag is pinned, its cached or
// upstream resolution otherwise.
type Resolver interface {
	Resolve(ctx context.Context, ref reference.NamedTagged) (digest.Digest, error)
}

// ResolverFunc adapts a function to the Resolver interface.
type ResolverFunc func(ctx context.Context, ref reference.NamedTagged) (digest.Digest, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, ref reference.NamedTagged) (digest.Digest, error) {
	return f(ctx, ref)
}

// manifestAccept asks for an index before a single-platform manifest: a
// multi-platform image must be pinned to its index, or nodes of other
// architectures could no longer pull it.
var manifestAccept = strings.Join(oci.ManifestMediaTypes(), ", ")

// HTTPResolver resolves a tag with a distribution API manifest HEAD and
// reads Docker-Content-Digest. A HEAD does not count as a pull on Docker Hub
// and, against the proxy, is answered from its cache and pins.
type HTTPResolver struct {
	// Endpoint is the base URL the HEAD goes to, for example the proxy's
	// in-cluster Service "http://pullbroker.pullbroker.svc:5000": the
	// webhook does not necessarily reach the proxy under the host name that
	// nodes use. Empty means https://<the reference's host>.
	Endpoint string
	// Client sends the request; nil means http.DefaultClient.
	Client *http.Client
	// Header is added to every request (an Authorization, for a proxy that
	// wants one).
	Header http.Header
}

// Resolve implements Resolver.
func (h *HTTPResolver) Resolve(ctx context.Context, ref reference.NamedTagged) (digest.Digest, error) {
	base := h.Endpoint
	if base == "" {
		base = "https://" + reference.Domain(ref)
	}
	u, err := url.Parse(strings.TrimSuffix(base, "/") + "/v2/" + reference.Path(ref) + "/manifests/" + ref.Tag())
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.String(), nil)
	if err != nil {
		return "", err
	}
	for k, vs := range h.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Accept", manifestAccept)
	client := h.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	// Drain so that the connection can be reused; a HEAD has no body, but
	// a misbehaving server may send one.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD %s: %s", u.Redacted(), resp.Status)
	}
	dgst, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", fmt.Errorf("HEAD %s: no valid Docker-Content-Digest: %w", u.Redacted(), err)
	}
	return dgst, nil
}
