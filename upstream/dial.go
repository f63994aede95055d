package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// newDefaultTransport is http.DefaultTransport tuned for one registry: the
// configured dial and response-header timeouts (neither bounds a long blob
// body), more idle connections per host since layers are fetched in
// parallel from the same registry, and HTTP/2 where the upstream offers it.
// A connection dialled for a redirect target (marked by redirectMarker)
// must not reach a loopback, private or link-local address. The check runs
// on the address actually dialled, after name resolution, so a name that
// resolves differently the second time cannot slip past it.
func newDefaultTransport(dialTimeout, responseTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second,
		ControlContext: refusePrivateRedirectTargets}
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
//
// Through an HTTP proxy (HTTPS_PROXY) the connection goes to the proxy, so
// only an address literal can be judged here; names are the proxy's to
// resolve and to police.
type redirectMarker struct {
	registryHost string
	allowPrivate bool
	proxy        func(*http.Request) (*url.URL, error) // the base transport's
	inner        http.RoundTripper
}

func (m *redirectMarker) RoundTrip(req *http.Request) (*http.Response, error) {
	// net/http sets Response on the requests it makes to follow a redirect.
	if m.allowPrivate || req.Response == nil || req.URL.Host == m.registryHost {
		return m.inner.RoundTrip(req)
	}
	if proxyURL, _ := m.proxy(req); proxyURL != nil {
		if ip, err := netip.ParseAddr(strings.Trim(req.URL.Hostname(), "[]")); err == nil && !isPublic(ip.Unmap()) {
			closeRequestBody(req)
			return nil, privateTargetError(ip)
		}
		return m.inner.RoundTrip(req)
	}
	return m.inner.RoundTrip(req.WithContext(context.WithValue(req.Context(), redirectTargetKey{}, true)))
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
		return privateTargetError(ip)
	}
	return nil
}

func privateTargetError(ip netip.Addr) error {
	return fmt.Errorf("%w: redirect to %s refused: loopback, private and link-local addresses are not followed unless the upstream sets allowPrivateRedirects", ErrInvalidResponse, ip)
}

func isPublic(ip netip.Addr) bool {
	return !(ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified())
}
