package upstream

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/prometheus/client_golang/prometheus"
)

// scopedTransport sends each request through ggcr's authenticating
// transport for the request's repository pull scope (ping, token exchange,
// Basic or Bearer header), set up on the repository's first request and
// cached. The repository comes from the request's call, so a redirected
// blob fetch keeps the scope of the request it came from.
type scopedTransport struct {
	registry     name.Registry
	auth         authn.Authenticator
	base         http.RoundTripper
	transports   *transportCache
	setupTimeout time.Duration
	setups       *prometheus.CounterVec // result
	log          *slog.Logger
}

func (t *scopedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	cl, ok := callFrom(req.Context())
	if !ok {
		closeRequestBody(req)
		return nil, errors.New("request without a repository scope")
	}
	rt, err := t.transports.get(req.Context(), cl.repo, func() (http.RoundTripper, error) {
		return t.setUp(req.Context(), cl.repo)
	})
	if err != nil {
		closeRequestBody(req)
		return nil, err
	}
	return rt.RoundTrip(req)
}

func (t *scopedTransport) setUp(ctx context.Context, repo string) (http.RoundTripper, error) {
	setupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.setupTimeout)
	defer cancel()
	scope := "repository:" + repo + ":pull"
	rt, err := transport.NewWithContext(setupCtx, t.registry, t.authFor(repo), t.base, []string{scope})
	if err != nil {
		t.setups.WithLabelValues("error").Inc()
		err = classifyRequestError(err)
		t.log.Debug("upstream transport set-up failed", "repository", repo, "error", err)
		return nil, err
	}
	t.setups.WithLabelValues("ok").Inc()
	return rt, nil
}

// authFor narrows a keychain-aware credential source to the repository,
// so that docker config entries scoped to a path ("quay.io/team") apply.
func (t *scopedTransport) authFor(repo string) authn.Authenticator {
	if kc, ok := t.auth.(authn.Keychain); ok {
		if a, err := kc.Resolve(t.registry.Repo(repo)); err == nil {
			return a
		}
	}
	return t.auth
}

// transportCache holds one authenticated transport per repository scope,
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
	repo      string
	ready     chan struct{} // closed once transport or err is set
	transport http.RoundTripper
	err       error
}

func newTransportCache(max int) *transportCache {
	return &transportCache{max: max, order: list.New(), entries: map[string]*list.Element{}}
}

// get returns the cached transport for repo, or builds it with create.
// create runs on its own goroutine (other callers may be waiting for the
// same result, so the first caller's cancellation must not end it); each
// caller still stops waiting when its own ctx ends. A failed set-up is not
// cached.
func (tc *transportCache) get(ctx context.Context, repo string, create func() (http.RoundTripper, error)) (http.RoundTripper, error) {
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
			entry.transport, entry.err = create()
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
		return entry.transport, entry.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
