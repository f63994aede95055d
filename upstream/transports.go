package upstream

import (
	"container/list"
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// newDefaultTransport is http.DefaultTransport tuned for one registry: the
// configured dial and response-header timeouts (neither bounds a long blob
// body), more idle connections per host since layers are fetched in
// parallel from the same registry, and HTTP/2 where the upstream offers it.
func newDefaultTransport(dialTimeout, responseTimeout time.Duration) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = dialTimeout
	t.ResponseHeaderTimeout = responseTimeout
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	t.ForceAttemptHTTP2 = true
	return t
}

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
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("not trying %s: the endpoint is %s://%s", req.URL.Scheme, g.scheme, g.host)
	}
	return g.inner.RoundTrip(req)
}

// transportCache holds one authenticated *http.Client per repository scope,
// least recently used evicted beyond max. Building one pings the registry
// and fetches a token, so it is done once per repository, by one caller,
// while concurrent callers for the same repository wait for it.
type transportCache struct {
	max int

	mu      sync.Mutex
	order   *list.List // of *transportEntry, most recently used first
	entries map[string]*list.Element
}

type transportEntry struct {
	repo   string
	ready  chan struct{} // closed once client or err is set
	client *http.Client
	err    error
}

func newTransportCache(max int) *transportCache {
	return &transportCache{max: max, order: list.New(), entries: map[string]*list.Element{}}
}

// get returns the cached client for repo, or builds it with create. create
// runs on its own goroutine with a context that the first caller's
// cancellation does not end (other callers may be waiting for the same
// result); each caller still stops waiting when its own ctx ends. A failed
// set-up is not cached.
func (tc *transportCache) get(ctx context.Context, repo string, create func() (*http.Client, error)) (*http.Client, error) {
	tc.mu.Lock()
	el, ok := tc.entries[repo]
	if ok {
		tc.order.MoveToFront(el)
	} else {
		el = tc.order.PushFront(&transportEntry{repo: repo, ready: make(chan struct{})})
		tc.entries[repo] = el
		for tc.order.Len() > tc.max {
			oldest := tc.order.Back()
			tc.order.Remove(oldest)
			delete(tc.entries, oldest.Value.(*transportEntry).repo)
		}
	}
	entry := el.Value.(*transportEntry)
	tc.mu.Unlock()

	if !ok {
		go func() {
			entry.client, entry.err = create()
			if entry.err != nil {
				tc.mu.Lock()
				if tc.entries[repo] == el {
					tc.order.Remove(el)
					delete(tc.entries, repo)
				}
				tc.mu.Unlock()
			}
			close(entry.ready)
		}()
	}

	select {
	case <-entry.ready:
		return entry.client, entry.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
