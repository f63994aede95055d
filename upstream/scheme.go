package upstream

import (
	"fmt"
	"net/http"
)

// schemeGuard refuses any request to the registry's own host:port with a
// scheme other than the endpoint's. ggcr pings loopback, RFC 1918 and
// ".local" registries over both https and http and keeps whichever answers;
// the guard makes an https endpoint never fall back to plain http, and saves
// an http endpoint the useless TLS attempt.
type schemeGuard struct {
	scheme string
	host   string
	inner  http.RoundTripper
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host == g.host && req.URL.Scheme != g.scheme {
		closeRequestBody(req)
		return nil, fmt.Errorf("not trying %s: the endpoint is %s://%s", req.URL.Scheme, g.scheme, g.host)
	}
	return g.inner.RoundTrip(req)
}
