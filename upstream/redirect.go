package upstream

import (
	"fmt"
	"net/http"
)

// maxRedirects bounds the hops of one request: a registry redirects to its
// blob storage, which may redirect once more to a signed URL.
const maxRedirects = 3

// redirectPolicy is the http.Client redirect policy of one upstream. Blob
// requests follow redirects (to blob storage, without the registry's
// Authorization: ggcr sets it only for the registry's host). A manifest,
// tag list or referrers answer must come from the registry itself, unless
// it is one of the few public registries known to serve its API from
// partner hosts (partnerHosts): a redirect there could hand a client, or
// the cache, whatever an address inside the network answers. Every
// redirect target is dialled under refusePrivateRedirectTargets.
type redirectPolicy struct {
	apiHosts hostSet
}

func (p redirectPolicy) check(req *http.Request, via []*http.Request) error {
	cl, _ := callFrom(req.Context())
	if !cl.followRedirects && !p.apiHosts.contains(req.URL.Hostname()) {
		return fmt.Errorf("%w: %s %s answered with a redirect; pullbroker follows redirects only for blobs",
			ErrInvalidResponse, via[0].Method, redactURL(via[0].URL))
	}
	if len(via) > maxRedirects {
		return fmt.Errorf("%w: %s %s: more than %d redirects", ErrInvalidResponse, via[0].Method, redactURL(via[0].URL), maxRedirects)
	}
	return nil
}
