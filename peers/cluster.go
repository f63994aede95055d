package peers

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/internal/filewatch"
)

// ProtocolPrefix is the path prefix of every peer request: the version
// lets replicas of two releases run side by side in a rolling upgrade, each
// asking the other only what both speak, and fetching for itself otherwise.
const ProtocolPrefix = "/peer/v1/"

const (
	// DefaultByteTimeout is how long a replica waits for the owner's
	// first byte, or any next one, before it fetches from the upstream
	// itself.
	DefaultByteTimeout = 5 * time.Second
	// downFor is how long a peer that refused a connection, or sent no
	// status to a manifest request within the first-byte bound (which it
	// answers before any work), is not asked at all, so that each request
	// for a key it owns does not pay a dial or the bound.
	downFor = 5 * time.Second
	// avoidFor is how long a peer that failed one key (wrong bytes, cut
	// mid-stream) is not asked for that key again.
	avoidFor = 10 * time.Minute
)

// Options are what a Cluster is built from.
type Options struct {
	Set *Set
	// TokenFile holds the bearer token peers send and expect
	// (cluster.peerTokenFile); re-read when it changes.
	TokenFile string
	// ByteTimeout bounds the wait for an owner's first byte and for each
	// next one; zero means DefaultByteTimeout.
	ByteTimeout time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
	// TLS, when set, is mutual TLS between peers (cluster.peerTLS).
	TLS *TLSFiles
	// Transport carries peer requests; nil is an HTTP transport, over
	// TLS when TLS is set.
	Transport http.RoundTripper
}

// Cluster is this replica's view of its peers: who owns what, and how to
// ask them.
type Cluster struct {
	set   *Set
	token *filewatch.Value[string]
	// scheme is that of requests to peers: https with mutual TLS.
	scheme string
	// serverTLS is the peer listener's TLS configuration; nil without
	// mutual TLS.
	serverTLS   *tls.Config
	client      *http.Client
	byteTimeout time.Duration
	log         *slog.Logger
	metrics     *metrics

	mu sync.Mutex
	// down holds peers that refused a connection, until when.
	down map[string]time.Time
	// avoid holds peer and key pairs that failed, until when.
	avoid map[string]time.Time
}

// New reads the token file and returns the cluster.
func New(opts Options) (*Cluster, error) {
	log := cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))
	parse := func(b []byte) (string, error) {
		token := strings.TrimSpace(string(b))
		if token == "" {
			return "", fmt.Errorf("%s is empty: put the shared peer token in it", opts.TokenFile)
		}
		return token, nil
	}
	token, err := filewatch.New(opts.TokenFile, parse, filewatch.Options[string]{
		OnError: func(err error) {
			log.Warn("peer token file does not load; keeping the previous token", "file", opts.TokenFile, "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster.peerTokenFile: %w", err)
	}
	scheme, transport := "http", opts.Transport
	var serverTLS, clientTLS *tls.Config
	if opts.TLS != nil {
		if serverTLS, clientTLS, err = mutualTLS(*opts.TLS, log); err != nil {
			return nil, err
		}
		scheme = "https"
	}
	if transport == nil {
		transport = &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     clientTLS,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}
	}
	c := &Cluster{
		set:         opts.Set,
		token:       token,
		scheme:      scheme,
		serverTLS:   serverTLS,
		client:      &http.Client{Transport: transport},
		byteTimeout: cmp.Or(opts.ByteTimeout, DefaultByteTimeout),
		log:         log,
		down:        map[string]time.Time{},
		avoid:       map[string]time.Time{},
	}
	c.metrics = newMetrics(opts.Registerer, c)
	return c, nil
}

// ServerTLS is the TLS configuration of the peer listener, which wants
// a client certificate of the peer CA; nil without cluster.peerTLS.
func (c *Cluster) ServerTLS() *tls.Config { return c.serverTLS }

// Ready reports whether the peer set is known, so that ownership means
// the same on every replica.
func (c *Cluster) Ready() bool { return c.set.Known() }

// remoteOwner is the owner of key when it is another replica that may be
// asked now, else "".
func (c *Cluster) remoteOwner(key string) string {
	owner := c.set.Owner(key)
	if owner == "" || c.set.IsSelf(owner) {
		return ""
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Before(c.down[owner]) || now.Before(c.avoid[owner+"\x00"+key]) {
		return ""
	}
	return owner
}

// markDown stops asking peer anything for a while.
func (c *Cluster) markDown(peer string) {
	c.mu.Lock()
	c.down[peer] = time.Now().Add(downFor)
	c.mu.Unlock()
}

// avoidKey stops asking peer for key for a while.
func (c *Cluster) avoidKey(peer, key string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, until := range c.avoid {
		if now.After(until) {
			delete(c.avoid, k)
		}
	}
	c.avoid[peer+"\x00"+key] = now.Add(avoidFor)
}

func (c *Cluster) livePeers() int {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.set.Members() {
		if !now.Before(c.down[m]) {
			n++
		}
	}
	return n
}

func (c *Cluster) authorize(req *http.Request) {
	req.Header.Set("Authorization", "Bearer "+c.token.Get())
}

// maxAnswer bounds the JSON of an owner's answer.
const maxAnswer = 4 << 10

// askWorking sends a request to owner that it answers with its status at
// once and with the rest once its work is done: a peer that sends no
// status within the first-byte bound hangs, and is not asked anything for
// a while. The answer is 200 or an error.
func (c *Cluster) askWorking(ctx context.Context, owner, pathAndQuery string) (*http.Response, error) {
	ctx, cancelStatus := context.WithCancelCause(ctx)
	timer := time.AfterFunc(c.byteTimeout, func() { cancelStatus(fmt.Errorf("%w (%s)", errNoFirstByte, c.byteTimeout)) })
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.scheme+"://"+owner+ProtocolPrefix+pathAndQuery, nil)
	if err != nil {
		timer.Stop()
		cancelStatus(nil)
		return nil, err
	}
	c.authorize(req)
	resp, err := c.client.Do(req)
	if !timer.Stop() && err == nil {
		resp.Body.Close()
		err = context.Cause(ctx)
	}
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errNoFirstByte) {
			err = cause
		}
		if isDialError(err) || errors.Is(err, errNoFirstByte) {
			c.markDown(owner)
		}
		cancelStatus(nil)
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancelStatus(nil)
		return nil, fmt.Errorf("peer answered %s", resp.Status)
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancelStatus}
	return resp, nil
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *cancelOnClose) Close() error {
	defer b.cancel(nil)
	return b.ReadCloser.Close()
}
