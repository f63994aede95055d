package upstream

import (
	"fmt"
	"net/http"
)

// maxBlobRedirects bounds the hops of a blob fetch: a registry redirects to
// its blob storage, which may redirect once more to a signed URL.
const maxBlobRedirects = 3

// checkRedirect is the http.Client redirect policy. Only blob requests follow
// redirects (to blob storage, without the registry's Authorization: ggcr
// sets it only for the registry's host), and only for a few hops. A
// manifest, tag list or referrers answer must come from the registry
// itself: a redirect there could hand a client, or the cache, whatever an
// address inside the network answers.
func checkRedirect(req *http.Request, via []*http.Request) error {
	cl, _ := callFrom(req.Context())
	if !cl.followRedirects {
		return fmt.Errorf("%w: %s %s answered with a redirect; pullbroker follows redirects only for blobs",
			ErrInvalidResponse, via[0].Method, redactURL(via[0].URL))
	}
	if len(via) > maxBlobRedirects {
		return fmt.Errorf("%w: %s %s: more than %d redirects", ErrInvalidResponse, via[0].Method, redactURL(via[0].URL), maxBlobRedirects)
	}
	return nil
}
