package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/auth"
	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/version"
	"github.com/pullbroker/pullbroker/leader"
	"github.com/pullbroker/pullbroker/mirror"
	"github.com/pullbroker/pullbroker/peers"
	"github.com/pullbroker/pullbroker/proxy"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/tlsreload"
	"github.com/pullbroker/pullbroker/upstream"
)

func newServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the registry proxy",
		Long: "Run the pull-through registry. Without --config it runs on the embedded default:\n" +
			"registry on :5000, admin (/metrics, /healthz, /readyz) on :5001, cache in ./pullbroker-data,\n" +
			"and the public registries docker.io, ghcr.io, gcr.io, quay.io, registry.k8s.io, public.ecr.aws.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return serve(ctx, cfg, newLogger(cfg.Log, os.Stderr))
		},
	}
}

func loadConfig(cmd *cobra.Command) (*config.Config, error) {
	path, _ := cmd.Flags().GetString("config")
	return config.Load(path)
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// app is a running pullbroker: the pieces serve assembles, kept together
// so they can be closed in order.
type app struct {
	registry *prometheus.Registry
	store    *cache.Store
	tags     *tags.Resolver
	handler  *proxy.Handler
	// peers is nil unless cluster.peerListen is set.
	peers   *peers.Cluster
	clients map[string]*upstream.Client
	sources []auth.Source
	// kept are what eviction and GC keep besides pins.
	kept *keptImages
	// elector picks the one replica that runs the store's cluster-wide
	// work (cluster.leaderElection).
	elector *leader.Elector
	// draining turns /readyz to 503 once shutdown began.
	draining atomic.Bool
}

func (a *app) Close() {
	for _, s := range a.sources {
		_ = s.Close()
	}
}

// build assembles the proxy from the config. Nothing here talks to an
// upstream: startup must not depend on any of them being reachable.
func build(ctx context.Context, cfg *config.Config, log *slog.Logger) (*app, error) {
	a := &app{registry: prometheus.NewRegistry()}
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo(version.Get()))

	driver, localRoot, err := cache.OpenDriver(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	locked, err := tags.LockedRoots(cfg)
	if err != nil {
		return nil, err
	}
	a.kept = &keptImages{locked: locked}
	cluster := cfg.Cluster
	if cluster.Name, err = replicaName(cfg.Cluster); err != nil {
		return nil, err
	}
	a.store, err = cache.New(driver, cache.Options{
		Logger: log.With("component", "cache"), Registerer: a.registry,
		LocalRoot: localRoot, SpoolDir: cfg.Storage.SpoolDir,
		MaxSizeBytes:        cfg.Storage.MaxSizeBytes,
		EvictMinIdle:        cfg.Storage.EvictMinIdle,
		Roots:               a.kept.roots,
		FillTimeout:         cfg.Storage.Fills.Timeout,
		FillStallTimeout:    cfg.Storage.Fills.StallTimeout,
		MaxConcurrentFills:  cfg.Storage.Fills.MaxConcurrent,
		ScrubInterval:       cfg.Storage.Scrub.Interval,
		ScrubBytesPerSecond: cfg.Storage.Scrub.BytesPerSecond,
		GCInterval:          cfg.Storage.GC.Interval,
		GCGrace:             cfg.Storage.GC.Grace,
		RecordCacheTTL:      cfg.Storage.RecordCacheTTL,
		AccountingInterval:  cfg.Cluster.AccountingInterval,
		Replica:             cluster.Name,
	})
	if err != nil {
		return nil, err
	}
	a.kept.watchPods(cfg, a.store, log, a.registry)
	a.elector, err = leader.New(cluster, leader.Options{Logger: log.With("component", "leader"), Registerer: a.registry, Driver: driver})
	if err != nil {
		return nil, err
	}

	clients := map[string]*upstream.Client{}
	for _, u := range cfg.Upstreams {
		src, err := auth.For(ctx, u, auth.Options{Logger: log.With("component", "auth"), Registerer: a.registry})
		if err != nil {
			a.Close()
			return nil, err
		}
		a.sources = append(a.sources, src)
		if u.Credentials != nil && len(u.Repositories) == 0 {
			log.Warn("upstream has credentials and allows every repository: anyone who reaches the proxy can pull whatever these credentials can read; set repositories to limit it", "upstream", u.Name)
		}
		c, err := upstream.New(u, upstream.Options{
			// upstream.New adds the upstream's name to its logger itself.
			Logger:        log.With("component", "upstream"),
			Authenticator: src,
			Registerer:    a.registry,
			Offline:       cfg.EffectiveMode(u) == config.ModeOffline,
			UserAgent:     version.Get().UserAgent(),
		})
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		clients[u.Name] = c
	}

	a.clients = clients
	var owners tags.Owners
	if cfg.Cluster.PeerListen != "" {
		if a.peers, err = newPeers(ctx, cfg.Cluster, log, a.registry); err != nil {
			a.Close()
			return nil, err
		}
		owners = a.peers
	}
	a.tags, err = tags.New(tags.Options{
		Config: cfg, Store: a.store, Upstreams: clients, Owners: owners,
		Logger: log.With("component", "tags"),
	})
	if err != nil {
		a.Close()
		return nil, err
	}
	a.handler, err = proxy.New(proxy.Options{
		Config: cfg, Store: a.store, Tags: a.tags, Upstreams: clients, Peers: a.peers,
		Logger: log.With("component", "proxy"), Registerer: a.registry,
	})
	if err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// buildInfo is the constant pullbroker_build_info series that names the
// running build, as `pullbroker version` prints it.
func buildInfo(v version.Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pullbroker_build_info",
		Help: "Always 1; the labels name the running build.",
		ConstLabels: prometheus.Labels{
			"version": v.Version, "commit": v.Commit, "build_date": v.Date, "go_version": v.GoVersion,
		},
	}, func() float64 { return 1 })
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a, err := build(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	// Before the store's eviction: until its Pods are listed, nothing is
	// evicted.
	if a.kept.running != nil {
		if err := a.kept.running.Start(ctx); err != nil {
			return fmt.Errorf("cache.keepRunningImages: %w", err)
		}
	}
	// Removes what a crash left under uploads/ and shares this replica's
	// reads and commits with the leader (cluster.accountingInterval).
	a.store.Start(ctx)
	// The leader measures the cache and runs eviction (storage.maxSizeBytes),
	// the scrub (storage.scrub) and GC (storage.gc) for all replicas. The
	// lease is released once Lead returned, when serve ends for any reason.
	leading, stopLeading := context.WithCancel(ctx)
	led := make(chan struct{})
	go func() {
		defer close(led)
		a.elector.Run(leading, a.store.Lead)
	}()
	defer func() {
		stopLeading()
		<-led
	}()
	if cfg.Sync.ImagesFile != "" {
		// Checked now, so a bad list fails the start rather than a run hours later.
		if _, err := mirror.ReadImageList(cfg, cfg.Sync.ImagesFile); err != nil {
			return fmt.Errorf("sync.imagesFile: %w", err)
		}
		go mirror.Schedule{Config: cfg, RegistryAPI: a.handler.InProcess(), Tags: a.tags,
			Logger: log.With("component", "sync"), Registerer: a.registry}.Run(ctx)
	}

	registrySrv := newServer(cfg.Listen, a.handler, log)
	if cfg.Listen.TLSEnabled() {
		if err := serveTLS(registrySrv, cfg.Listen.TLSCertFile, cfg.Listen.TLSKeyFile, log); err != nil {
			return fmt.Errorf("listen.tlsCertFile: %w", err)
		}
	}
	ln, err := net.Listen("tcp", cfg.Listen.Addr)
	if err != nil {
		return fmt.Errorf("listen.addr: %w", err)
	}
	defer ln.Close()
	var adminSrv *http.Server
	var adminLn net.Listener
	if cfg.Admin.Addr != "" {
		admin, err := adminMux(a, cfg)
		if err != nil {
			return err
		}
		adminSrv = newServer(cfg.Listen, admin, log)
		if cfg.Admin.TLSEnabled() {
			if err := serveTLS(adminSrv, cfg.Admin.TLSCertFile, cfg.Admin.TLSKeyFile, log); err != nil {
				return fmt.Errorf("admin.tlsCertFile: %w", err)
			}
		}
		if adminLn, err = net.Listen("tcp", cfg.Admin.Addr); err != nil {
			return fmt.Errorf("admin.addr: %w", err)
		}
		defer adminLn.Close()
	}

	errc := make(chan error, 3)
	var peerSrv *http.Server
	if a.peers != nil {
		peerSrv = newServer(cfg.Listen, a.peers.Handler(peers.Local{Store: a.store, Upstreams: a.clients, Tags: a.tags}), log)
		peerLn, err := net.Listen("tcp", cfg.Cluster.PeerListen)
		if err != nil {
			return fmt.Errorf("cluster.peerListen: %w", err)
		}
		defer peerLn.Close()
		if tlsConfig := a.peers.ServerTLS(); tlsConfig != nil {
			peerLn = tls.NewListener(peerLn, tlsConfig)
		}
		go func() { errc <- run(peerSrv, peerLn) }()
	}
	go func() { errc <- run(registrySrv, ln) }()
	if adminSrv != nil {
		go func() { errc <- run(adminSrv, adminLn) }()
	}
	log.Info("pullbroker serving", "addr", ln.Addr().String(), "tls", cfg.Listen.TLSEnabled(),
		"admin", cfg.Admin.Addr, "adminTLS", cfg.Admin.TLSEnabled(), "storage", cfg.Storage.Driver, "upstreams", upstreamNames(cfg))

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	a.draining.Store(true)
	log.Info("draining in-flight requests", "timeout", cfg.Listen.DrainTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.Listen.DrainTimeout)
	defer cancel()
	err = registrySrv.Shutdown(drainCtx)
	if peerSrv != nil {
		// After the registry port: the replica's own clients may still
		// follow fills that peers serve, and peers follow its fills.
		_ = peerSrv.Shutdown(drainCtx)
	}
	if adminSrv != nil {
		_ = adminSrv.Shutdown(drainCtx)
	}
	if err != nil {
		return fmt.Errorf("drain did not finish within listen.drainTimeout (%s): %w", cfg.Listen.DrainTimeout, err)
	}
	log.Info("stopped")
	return nil
}

// newServer applies the listen settings that protect every listener from
// clients that hold connections or memory: a bounded header block, a
// deadline for sending it, and idle keep-alive connections closed.
// ReadTimeout stays unset: requests have no body, and once it expired
// net/http would cancel the context of a long blob download.
func newServer(l config.Listener, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serveTLS makes srv serve the pair, re-read when the files change: the
// next handshake picks up a renewed pair.
func serveTLS(srv *http.Server, certFile, keyFile string, log *slog.Logger) error {
	certs, err := tlsreload.New(certFile, keyFile, tlsreload.WithLogger(log.With("component", "tls", "cert", certFile)))
	if err != nil {
		return err
	}
	srv.TLSConfig = certs.TLSConfig()
	return nil
}

// run serves srv on ln, with TLS when srv has a TLS config; ServeTLS adds
// h2 to NextProtos, so clients get HTTP/2.
func run(srv *http.Server, ln net.Listener) error {
	if srv.TLSConfig != nil {
		return srv.ServeTLS(ln, "", "")
	}
	return srv.Serve(ln)
}

func adminMux(a *app, cfg *config.Config) (*http.ServeMux, error) {
	api, err := a.handler.AdminHandler(cfg.Admin.TokenFile)
	if err != nil {
		return nil, err
	}
	ready := &readiness{check: a.store.CheckWritable, now: time.Now}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	mux.Handle("/api/", api)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	// Ready means the config loaded (the admin listener starts only after
	// build succeeded), the peer set is known, storage takes writes, and
	// no drain has begun.
	// Upstream reachability is not part of it: the cache serves without.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.draining.Load() {
			http.Error(w, "not ready: draining", http.StatusServiceUnavailable)
			return
		}
		if a.peers != nil && !a.peers.Ready() {
			http.Error(w, "not ready: the peer set is not known yet", http.StatusServiceUnavailable)
			return
		}
		if err := ready.storageWritable(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux, nil
}

// readinessValidFor is how long a storage probe's answer is reused: every
// kubelet probe, and every probe of every replica on shared storage, would
// otherwise write to storage.
const readinessValidFor = 5 * time.Second

// readiness runs the storage write probe at most once per readinessValidFor.
type readiness struct {
	check func(context.Context) error
	now   func() time.Time

	mu      sync.Mutex // held while probing, so concurrent probes share one
	checked time.Time
	err     error
}

func (r *readiness) storageWritable(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); !r.checked.IsZero() && now.Sub(r.checked) < readinessValidFor {
		return r.err
	}
	// Not the probe's own context: a prober that gave up must not be
	// remembered as storage that failed.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r.err = r.check(ctx)
	r.checked = r.now()
	return r.err
}

func upstreamNames(cfg *config.Config) string {
	names := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	return strings.Join(names, ",")
}
