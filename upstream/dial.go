package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// newDefaultTransport is http.DefaultTransport tuned for one registry: the
// configured dial and response-header timeouts (neither bounds a long blob
// body), more idle connections per host since layers are fetched in
// parallel from the same registry, and HTTP/2 where the upstream offers it.
// Unless allowPrivate, a connection dialled for a redirect target (marked by
// redirectMarker) must not reach a loopback, private or link-local address.
// The check runs on the address actually dialled, after name resolution, so
// a name that resolves differently the second time cannot slip past it.
func newDefaultTransport(dialTimeout, responseTimeout time.Duration, allowPrivate bool) *http.Transport {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		dialer.ControlContext = refusePrivateRedirectTargets
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = dialer.DialContext
	t.TLSHandshakeTimeout = dialTimeout
	t.ResponseHeaderTimeout = responseTimeout
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	t.ForceAttemptHTTP2 = true
	return t
}

// redirectTargetKey marks the context of a request that follows a redirect
// to a host other than the registry's.
type redirectTargetKey struct{}

// redirectMarker marks requests that follow a redirect away from the
// registry's own host:port, so that their connections are dialled under
// refusePrivateRedirectTargets. The configured endpoint itself may be
// anywhere (an in-cluster registry on a private address is normal).
type redirectMarker struct {
	registryHost string
	inner        http.RoundTripper
}

func (m *redirectMarker) RoundTrip(req *http.Request) (*http.Response, error) {
	// net/http sets Response on the requests it makes to follow a redirect.
	if req.Response != nil && req.URL.Host != m.registryHost {
		req = req.WithContext(context.WithValue(req.Context(), redirectTargetKey{}, true))
	}
	return m.inner.RoundTrip(req)
}

// refusePrivateRedirectTargets is a net.Dialer ControlContext: it refuses
// to connect a redirect target to an address that is not public.
func refusePrivateRedirectTargets(ctx context.Context, network, address string, _ syscall.RawConn) error {
	if marked, _ := ctx.Value(redirectTargetKey{}).(bool); !marked {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: redirect target address %q cannot be checked", ErrInvalidResponse, address)
	}
	if ip := ap.Addr().Unmap(); !isPublic(ip) {
		return fmt.Errorf("%w: redirect to %s refused: loopback, private and link-local addresses are not followed unless the upstream sets allowPrivateRedirects", ErrInvalidResponse, ip)
	}
	return nil
}

func isPublic(ip netip.Addr) bool {
	return !(ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified())
}
