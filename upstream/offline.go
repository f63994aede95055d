package upstream

import "net/http"

// offlineTransport refuses every request in offline mode, before any
// connection, token or breaker state is touched.
type offlineTransport struct {
	offline bool
	inner   http.RoundTripper
}

func (t *offlineTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.offline {
		closeRequestBody(req)
		return nil, ErrOffline
	}
	return t.inner.RoundTrip(req)
}

// closeRequestBody honours the RoundTripper contract for a request refused
// without being sent.
func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
