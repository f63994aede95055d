package upstream

import (
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/fakeregistry"
)

const (
	testUser     = "puller"
	testPassword = "s3cret-password"
)

// Authentication of the fake upstreams, with the test credentials.
var (
	withBasic  = fakeregistry.WithBasic(testUser, testPassword)
	withBearer = fakeregistry.WithBearer(testUser, testPassword)
)

// upstreamConfig is the configuration of a client for the fake.
func upstreamConfig(f *fakeregistry.Registry) config.Upstream {
	return config.Upstream{
		Name:     "fake.example",
		Endpoint: f.URL(),
		// The fake's blob storage (WithCDN) is on 127.0.0.2.
		AllowPrivateRedirects: true,
		DialTimeout:           time.Second,
		ResponseTimeout:       2 * time.Second,
	}
}

// newClient builds a client for the fake, with the credentials it accepts
// unless opts names an Authenticator.
func newClient(t *testing.T, f *fakeregistry.Registry, opts Options) *Client {
	t.Helper()
	if opts.Authenticator == nil {
		opts.Authenticator = f.Authenticator()
	}
	c, err := New(upstreamConfig(f), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rotatingAuth is an Authenticator whose password can change, counting
// how often it is asked.
type rotatingAuth struct {
	mu       sync.Mutex
	password string
	calls    int
}

func (a *rotatingAuth) Authorization() (*authn.AuthConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	return &authn.AuthConfig{Username: testUser, Password: a.password}, nil
}

func (a *rotatingAuth) set(p string) {
	a.mu.Lock()
	a.password = p
	a.mu.Unlock()
}

func (a *rotatingAuth) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// len reports the number of cached (or in-progress) transports.
func (tc *transportCache) len() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.order.Len()
}

// refusing reports whether calls are refused right now.
func (b *breaker) refusing() bool {
	if b.threshold <= 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case breakerOpen:
		return b.now().Sub(b.openedAt) < b.coolDown
	case breakerHalfOpen:
		return true
	}
	return false
}

// circuitOpen reports whether the client's circuit breaker refuses calls.
func (c *Client) circuitOpen() bool {
	return c.http.Transport.(*offlineTransport).inner.(*breakerTransport).breaker.refusing()
}
