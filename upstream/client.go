// Package upstream talks to the registries pullbroker pulls from: one
// Client per configured upstream, built on go-containerregistry's
// remote/transport (ping, Bearer token dance with refresh on 401, Basic,
// anonymous). A Client adds what a pull-through proxy needs around it:
// verified manifests, errors that tell "absent" from "unavailable", a
// circuit breaker, an offline switch, and metrics.
//
// It knows nothing of the cache or of client-facing HTTP.
package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
)

// Defaults for the Options fields left zero.
const (
	DefaultCircuitFailureThreshold = 5
	DefaultCircuitCoolDown         = 30 * time.Second
	DefaultTransportCacheSize      = 1024
	DefaultUserAgent               = "pullbroker"
)

// Options are a Client's collaborators and tuning. The zero value works.
type Options struct {
	// Logger receives circuit transitions and transport set-ups; nil discards.
	Logger *slog.Logger
	// Authenticator supplies credentials; nil means anonymous. It is asked
	// again for every token exchange and every Basic-authenticated request,
	// so rotated credentials take effect without a restart.
	Authenticator authn.Authenticator
	// Transport is the base round tripper; nil means a tuned clone of
	// http.DefaultTransport honouring the upstream's DialTimeout and
	// ResponseTimeout (as ResponseHeaderTimeout), HTTP/2 allowed.
	Transport http.RoundTripper
	// Registerer receives the metrics of metrics.go; nil registers nothing.
	Registerer prometheus.Registerer
	// Offline makes every call return ErrOffline without any connection.
	// SetOffline changes it later.
	Offline bool

	// CircuitFailureThreshold is how many consecutive unavailable calls
	// open the circuit. 0 means DefaultCircuitFailureThreshold; negative
	// disables the breaker.
	CircuitFailureThreshold int
	// CircuitCoolDown is how long an open circuit refuses calls before it
	// lets one probe through. 0 means DefaultCircuitCoolDown.
	CircuitCoolDown time.Duration
	// TransportCacheSize bounds the authenticated transports kept, one per
	// repository. 0 means DefaultTransportCacheSize.
	TransportCacheSize int
	// UserAgent prefixes ggcr's own User-Agent. "" means DefaultUserAgent.
	UserAgent string
}

// Client talks to one upstream registry. It is safe for concurrent use.
type Client struct {
	name     string
	registry name.Registry
	// baseURL is scheme://host of every registry request. The host is ggcr's
	// spelling of the registry, so that its transports recognise the requests
	// they must authenticate.
	baseURL      string
	auth         authn.Authenticator
	base         http.RoundTripper // user agent, scheme guard, metrics, Options.Transport
	setupTimeout time.Duration
	log          *slog.Logger
	metrics      *metrics
	breaker      *breaker
	transports   *transportCache
	offline      atomic.Bool
}

// New builds the client of one upstream. It does no network I/O.
func New(u config.Upstream, opts Options) (*Client, error) {
	if u.Name == "" {
		return nil, errors.New("upstream: empty name")
	}
	ep, err := url.Parse(u.Endpoint)
	if err != nil || ep.Host == "" {
		return nil, fmt.Errorf("upstream %s: endpoint %q is not a URL such as https://registry.example.com", u.Name, u.Endpoint)
	}
	if ep.Scheme != "http" && ep.Scheme != "https" {
		return nil, fmt.Errorf("upstream %s: endpoint %q must use http or https", u.Name, u.Endpoint)
	}
	if (ep.Path != "" && ep.Path != "/") || ep.RawQuery != "" || ep.User != nil {
		// ggcr addresses a registry by host only; a silently dropped path
		// would send requests somewhere else than configured.
		return nil, fmt.Errorf("upstream %s: endpoint must be scheme://host[:port] with no path, query or user", u.Name)
	}
	var nameOpts []name.Option
	if ep.Scheme == "http" {
		nameOpts = append(nameOpts, name.Insecure)
	}
	reg, err := name.NewRegistry(ep.Host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: endpoint host %q: %w", u.Name, ep.Host, err)
	}

	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("upstream", u.Name)
	auth := opts.Authenticator
	if auth == nil {
		auth = authn.Anonymous
	}
	dialTimeout := cmp.Or(u.DialTimeout, config.DefaultDialTimeout)
	responseTimeout := cmp.Or(u.ResponseTimeout, config.DefaultResponseTimeout)
	base := opts.Transport
	if base == nil {
		base = newDefaultTransport(dialTimeout, responseTimeout)
	}
	threshold := opts.CircuitFailureThreshold
	if threshold == 0 {
		threshold = DefaultCircuitFailureThreshold
	}
	cacheSize := opts.TransportCacheSize
	if cacheSize <= 0 {
		cacheSize = DefaultTransportCacheSize
	}

	m := newMetrics(opts.Registerer)
	c := &Client{
		name:     u.Name,
		registry: reg,
		baseURL:  ep.Scheme + "://" + reg.RegistryStr(),
		auth:     auth,
		// A ggcr userAgentTransport at the top stops ggcr from wrapping
		// its own (which would drop ours).
		base: transport.NewUserAgent(&schemeGuard{
			scheme: ep.Scheme,
			host:   reg.RegistryStr(),
			inner:  m.instrument(u.Name, base),
		}, cmp.Or(opts.UserAgent, DefaultUserAgent)),
		// Ping plus token exchange, each bounded by the dial and header
		// timeouts, with slack; set-up runs detached from any one caller.
		setupTimeout: 2 * (dialTimeout + responseTimeout),
		log:          logger,
		metrics:      m,
		transports:   newTransportCache(cacheSize),
	}
	circuitGauge := m.circuitOpen.WithLabelValues(u.Name)
	circuitGauge.Set(0)
	c.breaker = &breaker{
		threshold: threshold,
		coolDown:  cmp.Or(opts.CircuitCoolDown, DefaultCircuitCoolDown),
		now:       time.Now,
		onChange: func(open bool) {
			if open {
				circuitGauge.Set(1)
				m.circuitOpens.WithLabelValues(u.Name).Inc()
				logger.Warn("upstream circuit opened: calls fail fast until a probe succeeds",
					"consecutiveFailures", threshold, "coolDown", cmp.Or(opts.CircuitCoolDown, DefaultCircuitCoolDown))
			} else {
				circuitGauge.Set(0)
				logger.Info("upstream circuit closed: upstream answers again")
			}
		},
	}
	c.offline.Store(opts.Offline)
	return c, nil
}

// Name is the upstream's configured name ("docker.io").
func (c *Client) Name() string { return c.name }

// SetOffline switches offline mode at run time.
func (c *Client) SetOffline(offline bool) { c.offline.Store(offline) }

// Offline reports whether the client is in offline mode.
func (c *Client) Offline() bool { return c.offline.Load() }

// CircuitOpen reports whether the circuit breaker currently refuses calls.
func (c *Client) CircuitOpen() bool { return c.breaker.refusing() }

// begin admits a call through the offline switch and the circuit breaker.
// The returned finish must be deferred with the call's named error: it
// reports the outcome to the breaker and prefixes the upstream's name.
func (c *Client) begin(ctx context.Context) (finish func(*error), err error) {
	if c.offline.Load() {
		return nil, fmt.Errorf("upstream %s: %w", c.name, ErrOffline)
	}
	done, ok := c.breaker.allow()
	if !ok {
		return nil, fmt.Errorf("upstream %s: %w", c.name, ErrCircuitOpen)
	}
	return func(errp *error) {
		err := *errp
		switch {
		case err == nil:
			done(outcomeSuccess)
		case errors.Is(ctx.Err(), context.Canceled):
			done(outcomeAbandoned)
		case IsUnavailable(err):
			done(outcomeUnavailable)
		default:
			done(outcomeSuccess)
		}
		if err != nil {
			*errp = fmt.Errorf("upstream %s: %w", c.name, err)
		}
	}, nil
}

// clientFor returns the authenticated client for repo's pull scope.
func (c *Client) clientFor(ctx context.Context, repo string) (*http.Client, error) {
	return c.transports.get(ctx, repo, func() (*http.Client, error) {
		setupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.setupTimeout)
		defer cancel()
		scope := "repository:" + repo + ":pull"
		rt, err := transport.NewWithContext(setupCtx, c.registry, c.authFor(repo), c.base, []string{scope})
		if err != nil {
			c.metrics.transportSetup.WithLabelValues(c.name, "error").Inc()
			err = classifyRequestError(err)
			c.log.Debug("upstream transport set-up failed", "repository", repo, "error", err)
			return nil, err
		}
		c.metrics.transportSetup.WithLabelValues(c.name, "ok").Inc()
		// No Client.Timeout: it would cut long blob bodies. The base
		// transport's dial and header timeouts bound the wait instead.
		return &http.Client{Transport: rt}, nil
	})
}

// authFor narrows a keychain-aware credential source to the repository,
// so that docker config entries scoped to a path ("quay.io/team") apply.
func (c *Client) authFor(repo string) authn.Authenticator {
	if kc, ok := c.auth.(authn.Keychain); ok {
		if a, err := kc.Resolve(c.registry.Repo(repo)); err == nil {
			return a
		}
	}
	return c.auth
}

// repoPattern is the OCI distribution repository name grammar. Checking it
// keeps path tricks ("..", "%2F", "?") out of the URLs built from it.
var repoPattern = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// tagPattern is the OCI distribution tag grammar.
var tagPattern = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

func checkRepo(repo string) error {
	if len(repo) > 255 || !repoPattern.MatchString(repo) {
		return fmt.Errorf("invalid repository name %q", repo)
	}
	return nil
}

// request sends one request for repo to the upstream and returns the
// response, whatever its status. path is appended to /v2/<repo>/.
func (c *Client) request(ctx context.Context, method, repo, path string, query url.Values, header http.Header) (*http.Response, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	hc, err := c.clientFor(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := c.baseURL + "/v2/" + repo + "/" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, describeRequestError(method, req.URL, err)
	}
	return resp, nil
}

// describeRequestError classifies an error of http.Client.Do and names the
// request it belongs to, with a redacted URL: url.Error's own text would
// repeat the URL with its query, or a blob-storage redirect's signed URL.
// A *StatusError (from the token exchange) already names its own URL.
func describeRequestError(method string, u *url.URL, err error) error {
	if urlErr, ok := err.(*url.Error); ok {
		err = urlErr.Err
	}
	err = classifyRequestError(err)
	var se *StatusError
	if errors.As(err, &se) {
		return err
	}
	return fmt.Errorf("%s %s: %w", method, redactURL(u), err)
}

// readLimited reads body up to limit bytes, failing with tooLarge beyond.
// A body that breaks off is the upstream's failure, hence unreachable,
// unless the caller cancelled.
func readLimited(body io.Reader, limit int64, tooLarge error) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, &unreachableError{err: err}
	}
	if int64(len(b)) > limit {
		return nil, tooLarge
	}
	return b, nil
}
