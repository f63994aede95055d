// Package upstream talks to the registries pullbroker pulls from: one
// Client per configured upstream, built on go-containerregistry's
// remote/transport (ping, Bearer token dance with refresh on 401, Basic,
// anonymous). A Client adds what a pull-through proxy needs around it:
// verified manifests, errors that tell "absent" from "unavailable", a
// circuit breaker, an offline switch, redirect and token-realm guards, and
// metrics.
//
// Every call goes through one path, Client.do, and one http.Client whose
// transport is a stack of http.RoundTrippers, one concern a file, in the
// style of go-containerregistry's own:
//
//	offline.go   offlineTransport    refuses every request in offline mode
//	breaker.go   breakerTransport    fails fast while the upstream is down
//	scope.go     scopedTransport     ggcr's authenticating transport per repository
//	             ggcr transport      ping, token exchange, Basic/Bearer headers
//	scheme.go    schemeGuard         no http fallback for an https endpoint
//	realm.go     realmGuard          token realms only on allowed hosts
//	metrics.go   instrumentedTransport  counts, timings, rate-limit header
//	dial.go      redirectMarker      redirect targets dialled under the private-address guard
//	             *http.Transport     dial and response-header timeouts
//
// It knows nothing of the cache or of client-facing HTTP.
package upstream

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/distribution/reference"
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
	// Registerer receives the metrics of metrics.go; nil registers nothing.
	Registerer prometheus.Registerer
	// Offline makes every call return ErrOffline without any connection.
	// Set it from the configuration's effective mode for the upstream
	// (config.Config.EffectiveMode); Client.Offline reports it to callers.
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
	baseURL    string
	offline    bool
	http       *http.Client
	log        *slog.Logger
	transports *transportCache
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
	cacheSize := opts.TransportCacheSize
	if cacheSize <= 0 {
		cacheSize = DefaultTransportCacheSize
	}
	m := newMetrics(opts.Registerer)

	// The stack below ggcr's authenticating transport: it carries pings,
	// token requests, registry requests and redirected blob fetches alike.
	httpTransport := newDefaultTransport(dialTimeout, responseTimeout)
	var base http.RoundTripper = &redirectMarker{registryHost: reg.RegistryStr(),
		allowPrivate: u.AllowPrivateRedirects, proxy: httpTransport.Proxy, inner: httpTransport}
	base = m.instrument(u.Name, base)
	base = &realmGuard{allowed: realmHosts(reg.RegistryStr(), u.AllowedRealmHosts), inner: base}
	base = &schemeGuard{scheme: ep.Scheme, host: reg.RegistryStr(), inner: base}
	// A ggcr userAgentTransport at the top stops ggcr from wrapping its
	// own (which would drop ours).
	base = transport.NewUserAgent(base, cmp.Or(opts.UserAgent, DefaultUserAgent))

	c := &Client{
		name:       u.Name,
		registry:   reg,
		baseURL:    ep.Scheme + "://" + reg.RegistryStr(),
		offline:    opts.Offline,
		log:        logger,
		transports: newTransportCache(cacheSize),
	}
	scoped := &scopedTransport{
		registry:   reg,
		auth:       auth,
		base:       base,
		transports: c.transports,
		// Ping plus token exchange, each bounded by the dial and header
		// timeouts, with slack; set-up runs detached from any one caller.
		setupTimeout: 2 * (dialTimeout + responseTimeout),
		setups:       m.transportSetup.MustCurryWith(prometheus.Labels{"upstream": u.Name}),
		log:          logger,
	}
	threshold := cmp.Or(opts.CircuitFailureThreshold, DefaultCircuitFailureThreshold)
	coolDown := cmp.Or(opts.CircuitCoolDown, DefaultCircuitCoolDown)
	c.http = &http.Client{
		Transport: &offlineTransport{
			offline: opts.Offline,
			inner: &breakerTransport{
				breaker: newBreaker(threshold, coolDown, breakerReporter(u.Name, m, logger, threshold, coolDown)),
				inner:   scoped,
			},
		},
		CheckRedirect: redirectPolicy{apiHosts: partnerHosts[hostOnly(reg.RegistryStr())]}.check,
		// No Timeout: it would cut long blob bodies. The base transport's
		// dial and header timeouts bound the wait instead.
	}
	return c, nil
}

// Name is the upstream's configured name ("docker.io").
func (c *Client) Name() string { return c.name }

// Offline reports whether the client is in offline mode: the one answer
// to "may this upstream be asked?".
func (c *Client) Offline() bool { return c.offline }

// checkRepo validates a repository path with the distribution reference
// grammar, as a name on this registry. It keeps path tricks ("..", "%2F",
// "?", a host:port component) out of the URLs built from it.
func (c *Client) checkRepo(repo string) error {
	named, err := reference.WithName(c.registry.RegistryStr() + "/" + repo)
	if err != nil || reference.Path(named) != repo {
		return fmt.Errorf("invalid repository name %q", repo)
	}
	return nil
}
