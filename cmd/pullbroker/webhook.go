package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	admissionv1client "k8s.io/client-go/kubernetes/typed/admissionregistration/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/rewrite"
	"github.com/pullbroker/pullbroker/rewrite/webhook"
	"github.com/pullbroker/pullbroker/tlsreload"
)

// webhookFlags are the webhook's own settings; the rewrite rules are in
// rewriteFlags.
type webhookFlags struct {
	listen         string
	metricsListen  string
	certFile       string
	keyFile        string
	serviceName    string
	extraSANs      []string
	webhookConfig  string
	kubeconfig     string
	caResync       time.Duration
	certValidity   time.Duration
	shutdownPeriod time.Duration
}

func newWebhookCmd() *cobra.Command {
	var rf rewriteFlags
	var wf webhookFlags
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Run the mutating admission webhook that rewrites Pod images to the proxy",
		Long: "Serve the mutating admission webhook over TLS: " + webhook.PathMutate + " answers AdmissionReview v1\n" +
			"for Pods on CREATE and pods/ephemeralcontainers on UPDATE; " + webhook.PathHealthz + " answers probes.\n\n" +
			"TLS: with --tls-cert-file and --tls-key-file the pair is read from files and picked up again\n" +
			"when they change (cert-manager, Secret volumes). Without them a CA and a serving certificate for\n" +
			"the Service's DNS names are made at start, and the CA is written into the caBundle of the\n" +
			"MutatingWebhookConfiguration --webhook-config (needs get and update on it), and written again\n" +
			"whenever something removes it.\n\n" +
			"Register it with failurePolicy: Ignore (a Pod is admitted unchanged when the webhook is down)\n" +
			"and reinvocationPolicy: IfNeeded.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			log := newLogger(cfg.Log, os.Stderr).With("component", "webhook")
			rw, err := rf.rewriter(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return runWebhook(ctx, log, cfg.Listen, &rf, &wf, rw)
		},
	}
	rf.register(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&wf.listen, "listen", ":9443", "HTTPS address of "+webhook.PathMutate+" and "+webhook.PathHealthz)
	f.StringVar(&wf.metricsListen, "metrics-listen", ":9090", "plain HTTP address of /metrics and /healthz; empty disables")
	f.StringVar(&wf.certFile, "tls-cert-file", "", "serving certificate (PEM), reloaded when it changes; empty: self-signed")
	f.StringVar(&wf.keyFile, "tls-key-file", "", "serving key (PEM), reloaded when it changes")
	f.StringVar(&wf.serviceName, "service-name", "pullbroker-webhook", "Service in front of the webhook; the self-signed certificate names <service>.<namespace>.svc")
	f.StringSliceVar(&wf.extraSANs, "tls-san", nil, "more DNS names or IP addresses for the self-signed certificate")
	f.StringVar(&wf.webhookConfig, "webhook-config", "pullbroker", "MutatingWebhookConfiguration whose caBundle gets the self-signed CA; empty leaves it alone")
	f.StringVar(&wf.kubeconfig, "kubeconfig", "", "kubeconfig for writing the caBundle; empty: in-cluster, then $KUBECONFIG")
	f.DurationVar(&wf.caResync, "ca-bundle-resync", time.Minute, "how often the caBundle is checked and written again if removed")
	f.DurationVar(&wf.certValidity, "self-signed-validity", 365*24*time.Hour, "validity of the self-signed CA and certificate (made anew at every start)")
	f.DurationVar(&wf.shutdownPeriod, "shutdown-timeout", 10*time.Second, "time in-flight reviews get to finish on SIGTERM")
	return cmd
}

// runWebhook serves admission reviews; its listeners take listen's header,
// header-deadline and idle limits, as serve's do.
func runWebhook(ctx context.Context, log *slog.Logger, limits config.Listener, rf *rewriteFlags, wf *webhookFlags, rw *rewrite.Rewriter) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := webhook.NewMetrics(reg)
	handler := webhook.NewHandler(webhook.Options{
		Rewriter:       rw,
		Filter:         rf.podFilter(),
		ResolveTimeout: rf.resolveTimeout,
		Logger:         log,
		Metrics:        metrics,
	})

	tlsConfig, err := webhookTLS(ctx, log, rf, wf)
	if err != nil {
		return err
	}
	srv := newServer(limits, webhook.NewServeMux(handler), log)
	srv.TLSConfig = tlsConfig
	ln, err := net.Listen("tcp", wf.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()

	var metricsSrv *http.Server
	if wf.metricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc(webhook.PathHealthz, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		metricsSrv = newServer(limits, mux, log)
		mln, err := net.Listen("tcp", wf.metricsListen)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		go func() { errc <- metricsSrv.Serve(mln) }()
	}
	log.Info("webhook serving", "addr", ln.Addr().String(), "metrics", wf.metricsListen,
		"proxyHost", rf.proxyHost, "excludedNamespaces", rf.podFilter().ExcludeNamespaces, "resolveTags", rf.resolveTags)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), wf.shutdownPeriod)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(shutdownCtx)
	}
	log.Info("webhook stopped")
	return err
}

// webhookTLS serves the certificate files when given, else a self-signed
// certificate whose CA it keeps in the webhook configuration's caBundle.
func webhookTLS(ctx context.Context, log *slog.Logger, rf *rewriteFlags, wf *webhookFlags) (*tls.Config, error) {
	if wf.certFile != "" || wf.keyFile != "" {
		if wf.certFile == "" || wf.keyFile == "" {
			return nil, errors.New("--tls-cert-file and --tls-key-file go together")
		}
		certs, err := tlsreload.New(wf.certFile, wf.keyFile, tlsreload.WithLogger(log.With("component", "tls")))
		if err != nil {
			return nil, err
		}
		return certs.TLSConfig(), nil
	}

	hosts := append(webhook.ServiceHosts(wf.serviceName, rf.namespace), wf.extraSANs...)
	certs, err := webhook.GenerateSelfSigned(hosts, wf.certValidity, time.Now())
	if err != nil {
		return nil, err
	}
	log.Info("serving a self-signed certificate", "hosts", hosts, "validity", wf.certValidity)
	if wf.webhookConfig != "" {
		restConfig, err := kubeConfig(wf.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("writing the caBundle needs API access: %w", err)
		}
		// This API group's client alone: the full clientset would link
		// every group into the binary.
		client, err := admissionv1client.NewForConfig(restConfig)
		if err != nil {
			return nil, err
		}
		// Kept up in the background: the configuration may be applied
		// after the webhook starts, and GitOps tools may reset it.
		go webhook.KeepCABundle(ctx, client.MutatingWebhookConfigurations(),
			wf.webhookConfig, certs.CAPEM, wf.caResync, log)
	} else {
		log.Warn("self-signed certificate and --webhook-config empty: the API server cannot verify this webhook unless its CA is put into the caBundle by other means")
	}
	return &tls.Config{Certificates: []tls.Certificate{certs.Certificate}, MinVersion: tls.VersionTLS12}, nil
}

// kubeConfig is the given kubeconfig, else the in-cluster service account,
// else $KUBECONFIG or ~/.kube/config.
func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		return clientcmd.BuildConfigFromFlags("", path)
	}
	if c, err := rest.InClusterConfig(); err == nil {
		return c, nil
	}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
}
