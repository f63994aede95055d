// Package proxy is pullbroker's HTTP face: the OCI distribution pull API
// over every configured upstream, OCI error bodies, and the request path
// where the cache and the upstream clients meet.
package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/flight"
	"github.com/pullbroker/pullbroker/peers"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

// Options are what a Handler is built from.
type Options struct {
	Config *config.Config
	Store  *cache.Store
	// Tags answers manifests under the pull policy.
	Tags *tags.Resolver
	// Upstreams holds one client per configured upstream, by Name.
	Upstreams map[string]*upstream.Client
	// Peers, when replicas share the storage, fetches each blob from the
	// upstream once between them; nil fetches every miss here.
	Peers      *peers.Cluster
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock of request durations.
	Now func() time.Time
}

// Handler serves the registry API.
type Handler struct {
	cfg       *config.Config
	store     *cache.Store
	upstreams map[string]*upstream.Client
	log       *slog.Logger
	metrics   *metrics
	now       func() time.Time
	tags      *tags.Resolver
	access    *access
	peers     *peers.Cluster

	// Concurrent requests for a blob not yet linked to its repository
	// share one confirming HEAD.
	blobConfirmFlight flight.Group[int64]
	catalog           catalogListing
}

// New returns a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, u := range opts.Config.Upstreams {
		if opts.Upstreams[u.Name] == nil {
			return nil, fmt.Errorf("proxy: no upstream client for configured upstream %q", u.Name)
		}
	}
	if opts.Tags == nil {
		return nil, errors.New("proxy: no tag resolver")
	}
	m := newMetrics(opts.Registerer)
	acc, err := newAccess(opts.Config, opts.Logger, m)
	if err != nil {
		return nil, err
	}
	return &Handler{
		tags:      opts.Tags,
		access:    acc,
		cfg:       opts.Config,
		store:     opts.Store,
		upstreams: opts.Upstreams,
		log:       opts.Logger,
		metrics:   m,
		now:       opts.Now,
		peers:     opts.Peers,
	}, nil
}

// ServeHTTP routes one client request and logs it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.handle(w, r, true) }

// InProcess serves the registry API to this process's own clients (sync,
// export and the scheduled sync), which client access rules do not apply
// to: the proxy's loopback address is in no allowedNetworks, and it holds
// no client credentials. Repository globs still apply.
func (h *Handler) InProcess() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.handle(w, r, false) })
}

func (h *Handler) handle(w http.ResponseWriter, r *http.Request, checkClient bool) {
	start := h.now()
	info := &requestInfo{id: requestID(r)}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	rec.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rec.Header().Set("X-Request-Id", info.id)

	h.serve(rec, r, info, checkClient)

	elapsed := h.now().Sub(start)
	h.metrics.observeRequest(info.kind, r.Method, rec.status, elapsed)
	attrs := []slog.Attr{
		slog.String("id", info.id),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", rec.status),
		slog.Int64("bytes", rec.bytes),
		slog.String("upstream", info.upstream),
		slog.String("cache", info.outcome),
		slog.Duration("duration", elapsed),
		slog.String("remote", r.RemoteAddr),
	}
	if rec.cause != nil {
		attrs = append(attrs, slog.Any("error", rec.cause))
	}
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, info *requestInfo, checkClient bool) {
	if apiErr := h.checkClient(w, r, checkClient); apiErr != nil {
		info.kind = "denied"
		writeError(w, r, apiErr)
		return
	}
	rt, apiErr := parseRoute(h.cfg, r)
	if apiErr != nil {
		info.kind = "invalid"
		writeError(w, r, apiErr)
		return
	}
	info.kind = rt.kind
	info.upstream = rt.registry
	if rt.registry != "" {
		if apiErr := h.access.allowRepository(rt); apiErr != nil {
			writeError(w, r, apiErr)
			return
		}
	}

	if rt.kind == kindUpload || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		writeError(w, r, newAPIError(http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported,
			"pullbroker is a pull-through cache: %s %s is not supported", r.Method, r.URL.Path))
		return
	}

	switch rt.kind {
	case kindBase:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write([]byte("{}"))
		}
	case kindCatalog:
		h.serveCatalog(w, r)
	case kindManifest:
		h.serveManifest(w, r, rt, info)
	case kindBlob:
		h.serveBlob(w, r, rt, info)
	case kindTags:
		h.serveTags(w, r, rt, info)
	case kindReferrers:
		h.serveReferrers(w, r, rt, info)
	}
}

// checkClient applies client access rules to a request that they apply to.
func (h *Handler) checkClient(w http.ResponseWriter, r *http.Request, applies bool) *apiError {
	if !applies {
		return nil
	}
	return h.access.checkClient(w, r)
}

func (h *Handler) client(rt *route) *upstream.Client { return h.upstreams[rt.registry] }

func (h *Handler) offline(rt *route) bool { return h.tags.Offline(rt.registry) }

// requestInfo collects what the request log line and metrics report.
type requestInfo struct {
	id       string
	kind     string
	upstream string
	outcome  string // a tags.Outcome, or empty
}

// requestID keeps a caller's ID (a sane one) so logs join across hops.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 64 && printableASCII(id) {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

type statusRecorder struct {
	http.ResponseWriter
	status      int
	bytes       int64
	wroteHeader bool
	cause       error
}

func (s *statusRecorder) recordCause(err error) { s.cause = err }

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wroteHeader {
		s.status, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wroteHeader = true
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController and io.Copy's sendfile path reach
// the connection's own writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ReadFrom keeps sendfile working: http's own response writer uses it
// when the source is a file.
func (s *statusRecorder) ReadFrom(src io.Reader) (int64, error) {
	s.wroteHeader = true
	n, err := io.Copy(s.ResponseWriter, src)
	s.bytes += n
	return n, err
}
