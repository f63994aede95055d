// Package auth holds the credentials pullbroker uses towards its upstream
// registries and hands them out as go-containerregistry authenticators.
//
// Every upstream gets one Source, built by For from its config.Credentials:
// static basic credentials, a Google service-account key (used as _json_key
// or exchanged for OAuth2 access tokens), a docker config file, a
// Kubernetes Secret watched live, or Amazon ECR authorization tokens. A Source answers Authorization() with the
// credential that is current at the time of the call, so a rotated file or
// Secret takes effect on the next upstream request; a rotation that cannot be
// used (a missing file, a malformed or deleted Secret) keeps the last good
// credential, is logged and counted.
//
// Secrets never leave this package except in the AuthConfig handed to the
// upstream transport: log lines, metric labels and error texts name the file
// or Secret and what is wrong with it, never its contents.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/config"
)

// Kinds of credential source, as reported by Source.Kind.
const (
	KindAnonymous         = "anonymous"
	KindBasic             = "basic"
	KindGCPServiceAccount = "gcpServiceAccount"
	KindDockerConfig      = "dockerConfig"
	KindKubernetesSecret  = "kubernetesSecret"
	KindECR               = "ecr"
)

// Options are the process-wide things a Source needs.
type Options struct {
	// Logger receives why a credential could not be loaded or rotated.
	// Nil discards.
	Logger *slog.Logger
	// Registerer receives the credential metrics (metrics.go). Nil keeps
	// them unregistered. Several Sources may share one Registerer.
	Registerer prometheus.Registerer
	// HTTPClient is used for OAuth2 token endpoints (the GCP key's
	// token_uri). Nil means a client with a 30 s timeout. (The AWS SDK of
	// the ecr source keeps its own, which honours AWS_CA_BUNDLE.)
	HTTPClient *http.Client
	// LookupEnv resolves basic.passwordEnv. Nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// FileCheckInterval bounds how often a credential file is read to
	// notice that it changed. Zero means one second; negative means on
	// every Authorization call.
	FileCheckInterval time.Duration
	// SyncTimeout bounds how long For waits for the first list of a
	// watched Secret. Zero means 15 s. A Secret that is not there yet is
	// not an error: Authorization fails until it appears.
	SyncTimeout time.Duration
}

// Source is the credential of one upstream.
//
// Authorization returns the registry-wide credential as of now. Resolve
// (authn.Keychain) returns an authenticator for one repository, which only
// differs from the registry-wide one for docker config entries scoped to a
// path ("quay.io/team"), as kubelet does; where no entry applies the
// answer is an empty AuthConfig (anonymous), as kubelet pulls without
// credentials then. Close stops any watch.
type Source interface {
	authn.Authenticator
	authn.ContextAuthenticator
	authn.Keychain
	io.Closer
	// Kind is one of the Kind constants.
	Kind() string
	// Healthy reports whether the last attempt to load, rotate or refresh
	// the credential succeeded. A Source that is not healthy may still
	// serve the last good credential.
	Healthy() bool
}

// For builds the credential source of one upstream and starts its watches
// under ctx. Nil credentials give an anonymous Source, whose Authorization
// returns an empty AuthConfig (go-containerregistry then sends no
// Authorization header, as with authn.Anonymous).
//
// Errors are configuration problems found at start: an unreadable or
// malformed file, an unset environment variable, a kubeconfig that cannot
// be loaded. A Secret that does not exist yet is not an error.
func For(ctx context.Context, up config.Upstream, opts Options) (Source, error) {
	opts = opts.withDefaults()
	s := &source{
		upstream: up.Name,
		names:    registryNames(up),
		log:      opts.Logger.With("upstream", up.Name),
		opts:     opts,
		metrics:  newMetrics(opts.Registerer).forUpstream(up.Name),
		baseCtx:  ctx,
	}
	c := up.Credentials
	s.kind = kindOf(c)
	s.log = s.log.With("source", s.kind)
	var err error
	switch s.kind {
	case KindAnonymous:
		s.store(anonymousMaterial{})
		return s, nil
	case KindBasic:
		err = s.startBasic(c.Basic)
	case KindGCPServiceAccount:
		err = s.startGCP(ctx, c.GCPServiceAccount)
	case KindDockerConfig:
		err = s.startDockerConfig(c.DockerConfig)
	case KindKubernetesSecret:
		err = s.startKubernetesSecret(ctx, c.KubernetesSecret)
	case KindECR:
		err = s.startECR(ctx, c.ECR)
	default:
		err = errors.New("credentials name no source")
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("upstream %s: credentials: %w", up.Name, err)
	}
	return s, nil
}

func kindOf(c *config.Credentials) string {
	switch {
	case c == nil:
		return KindAnonymous
	case c.Basic != nil:
		return KindBasic
	case c.GCPServiceAccount != nil:
		return KindGCPServiceAccount
	case c.DockerConfig != nil:
		return KindDockerConfig
	case c.KubernetesSecret != nil:
		return KindKubernetesSecret
	case c.ECR != nil:
		return KindECR
	}
	return ""
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.FileCheckInterval == 0 {
		o.FileCheckInterval = time.Second
	}
	if o.SyncTimeout == 0 {
		o.SyncTimeout = 15 * time.Second
	}
	return o
}

// registryNames are the host[:port] names a docker config entry may be
// matched against for this upstream, most specific use first: the name
// clients use, its aliases, then the endpoint host.
func registryNames(up config.Upstream) []string {
	var names []string
	add := func(n string) {
		if n == "" {
			return
		}
		for _, m := range names {
			if m == n {
				return
			}
		}
		names = append(names, n)
	}
	add(up.Name)
	for _, a := range up.Aliases {
		add(a)
	}
	if u, err := url.Parse(up.Endpoint); err == nil {
		add(u.Host)
	}
	return names
}

// material is one loaded credential.
type material interface {
	// authFor returns the credential for repository repo ("" for the
	// registry as a whole).
	authFor(ctx context.Context, repo string) (*authn.AuthConfig, error)
}

type anonymousMaterial struct{}

func (anonymousMaterial) authFor(context.Context, string) (*authn.AuthConfig, error) {
	return &authn.AuthConfig{}, nil
}

type basicMaterial struct{ username, password string }

func (b basicMaterial) authFor(context.Context, string) (*authn.AuthConfig, error) {
	return &authn.AuthConfig{Username: b.username, Password: b.password}, nil
}

// source is the one implementation of Source: a current material swapped
// atomically by whatever watches the origin, plus an optional check run
// before each use (a file's stat).
type source struct {
	upstream string
	kind     string
	names    []string
	log      *slog.Logger
	opts     Options
	metrics  *upstreamMetrics
	baseCtx  context.Context

	cur atomic.Pointer[materialBox]
	// originOK: the last load of the file, Secret or config succeeded.
	// tokenOK: the last token exchange (GCP, ECR) succeeded. Healthy() and the
	// gauge are both together, so a token refresh does not hide a bad
	// rotation of the key, nor the other way round.
	mu       sync.Mutex
	originOK bool
	tokenOK  bool
	// missing explains, without secrets, why there is no credential yet.
	missing atomic.Pointer[string]

	// beforeUse, when set, runs at the start of every Authorization (the
	// file watch). It must be cheap.
	beforeUse func()

	closeOnce sync.Once
	closers   []func()
}

type materialBox struct{ m material }

// store takes m into use and marks the source healthy: a new credential
// has no failed exchange yet.
func (s *source) store(m material) {
	s.cur.Store(&materialBox{m})
	s.setHealth(func() { s.originOK, s.tokenOK = true, true })
}

// rotated takes a newly loaded credential into use.
func (s *source) rotated(m material, what string) {
	first := s.cur.Load() == nil
	s.store(m)
	s.metrics.reloads.Inc()
	if first {
		s.log.Info("credential loaded", "from", what)
	} else {
		s.log.Info("credential rotated", "from", what)
	}
}

// failed records that the origin could not give a usable credential. The
// last good one, if any, stays in use. err must not carry secrets: every
// error built in this package names what is wrong, never a value.
func (s *source) failed(what string, err error) {
	s.setHealth(func() { s.originOK = false })
	s.metrics.errors.Inc()
	if s.cur.Load() != nil {
		s.log.Warn("credential update rejected; keeping the last good credential", "from", what, "reason", err.Error())
	} else {
		msg := fmt.Sprintf("%s: %v", what, err)
		s.missing.Store(&msg)
		s.log.Error("no usable credential", "from", what, "reason", err.Error())
	}
}

// setHealth applies change under the lock and publishes the gauge.
func (s *source) setHealth(change func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	change()
	if s.originOK && s.tokenOK {
		s.metrics.healthy.Set(1)
	} else {
		s.metrics.healthy.Set(0)
	}
}

func (s *source) Kind() string { return s.kind }

func (s *source) Healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.originOK && s.tokenOK
}

func (s *source) Authorization() (*authn.AuthConfig, error) {
	return s.AuthorizationContext(s.baseCtx)
}

func (s *source) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	return s.authFor(ctx, "")
}

func (s *source) authFor(ctx context.Context, repo string) (*authn.AuthConfig, error) {
	if s.beforeUse != nil {
		s.beforeUse()
	}
	box := s.cur.Load()
	if box == nil {
		why := "not loaded yet"
		if p := s.missing.Load(); p != nil {
			why = *p
		}
		return nil, fmt.Errorf("upstream %s: no %s credential available: %s", s.upstream, s.kind, why)
	}
	a, err := box.m.authFor(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", s.upstream, err)
	}
	return a, nil
}

// Resolve implements authn.Keychain: the returned authenticator looks the
// credential up on every call, for the repository of res. res names the
// registry by whatever host the caller connects to; only its repository
// path is used, matched under this upstream's names.
func (s *source) Resolve(res authn.Resource) (authn.Authenticator, error) {
	repo := strings.TrimPrefix(res.String(), res.RegistryStr())
	repo = strings.TrimPrefix(repo, "/")
	return &repoAuthenticator{s: s, repo: repo}, nil
}

type repoAuthenticator struct {
	s    *source
	repo string
}

func (r *repoAuthenticator) Authorization() (*authn.AuthConfig, error) {
	return r.s.authFor(r.s.baseCtx, r.repo)
}

func (r *repoAuthenticator) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	return r.s.authFor(ctx, r.repo)
}

// Close stops the watches. Authorization keeps answering with the last
// credential.
func (s *source) Close() error {
	s.closeOnce.Do(func() {
		for i := len(s.closers) - 1; i >= 0; i-- {
			s.closers[i]()
		}
	})
	return nil
}
