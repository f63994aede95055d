package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
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
	"github.com/pullbroker/pullbroker/proxy"
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
	handler  *proxy.Handler
	sources  []auth.Source
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
	a.store, err = cache.New(driver, cache.Options{
		Logger: log.With("component", "cache"), Registerer: a.registry,
		LocalRoot: localRoot, SpoolDir: cfg.Storage.SpoolDir,
		MaxSizeBytes: cfg.Storage.MaxSizeBytes,
	})
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

	a.handler, err = proxy.New(proxy.Options{
		Config: cfg, Store: a.store, Upstreams: clients,
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
	if err := checkTokenFile(cfg.Admin); err != nil {
		return err
	}
	a, err := build(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	// Measures the cache for the metrics and runs eviction (storage.maxSizeBytes).
	a.store.Start(ctx)

	registrySrv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.Listen.TLSEnabled() {
		certs, err := tlsreload.New(cfg.Listen.TLSCertFile, cfg.Listen.TLSKeyFile, tlsreload.WithLogger(log.With("component", "tls")))
		if err != nil {
			return fmt.Errorf("listen.tlsCertFile: %w", err)
		}
		// GetCertificate picks up a renewed pair on the next handshake;
		// ServeTLS adds h2 to NextProtos, so clients get HTTP/2.
		registrySrv.TLSConfig = certs.TLSConfig()
	}
	adminSrv := &http.Server{Handler: adminMux(a, cfg), ReadHeaderTimeout: 10 * time.Second}

	ln, err := net.Listen("tcp", cfg.Listen.Addr)
	if err != nil {
		return fmt.Errorf("listen.addr: %w", err)
	}
	var adminLn net.Listener
	if cfg.Admin.Addr != "" {
		if adminLn, err = net.Listen("tcp", cfg.Admin.Addr); err != nil {
			ln.Close()
			return fmt.Errorf("admin.addr: %w", err)
		}
	}

	errc := make(chan error, 2)
	go func() {
		if registrySrv.TLSConfig != nil {
			errc <- registrySrv.ServeTLS(ln, "", "")
		} else {
			errc <- registrySrv.Serve(ln)
		}
	}()
	if adminLn != nil {
		go func() { errc <- adminSrv.Serve(adminLn) }()
	}
	log.Info("pullbroker serving", "addr", ln.Addr().String(), "tls", cfg.Listen.TLSEnabled(),
		"admin", cfg.Admin.Addr, "storage", cfg.Storage.Driver, "upstreams", upstreamNames(cfg))

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
	_ = adminSrv.Shutdown(drainCtx)
	if err != nil {
		return fmt.Errorf("drain did not finish within listen.drainTimeout (%s): %w", cfg.Listen.DrainTimeout, err)
	}
	log.Info("stopped")
	return nil
}

// checkTokenFile fails the start when admin.tokenFile is set but cannot
// be read or is empty; the admin API reads it again on every request, so a
// rotated token takes effect without a restart.
func checkTokenFile(a config.Admin) error {
	if a.TokenFile == "" {
		return nil
	}
	b, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return fmt.Errorf("admin.tokenFile: %w (create it with the admin token, or remove admin.tokenFile to disable the admin API)", err)
	}
	if strings.TrimSpace(string(b)) == "" {
		return fmt.Errorf("admin.tokenFile: %s is empty: put the admin token in it", a.TokenFile)
	}
	return nil
}

func adminMux(a *app, cfg *config.Config) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	mux.Handle("/api/", a.handler.AdminHandler(cfg.Admin.TokenFile))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	// Ready means the config loaded (the admin listener starts only after
	// build succeeded), storage takes writes, and no drain has begun.
	// Upstream reachability is not part of it: the cache serves without.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.draining.Load() {
			http.Error(w, "not ready: draining", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := a.store.CheckWritable(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

func upstreamNames(cfg *config.Config) string {
	names := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	return strings.Join(names, ",")
}
