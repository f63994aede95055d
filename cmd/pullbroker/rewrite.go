package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/rewrite"
	"github.com/pullbroker/pullbroker/rewrite/manifests"
)

// rewriteFlags are the rewrite rules, shared by `webhook` and `rewrite` so
// that both rewrite the same image the same way.
type rewriteFlags struct {
	proxyHost         string
	proxyAliases      []string
	registries        []string
	rules             []string
	excludeImages     []string
	excludeNamespaces []string
	namespace         string
	resolveTags       bool
	resolverURL       string
	resolverCAFile    string
	resolveTimeout    time.Duration
}

// defaultNamespace is the proxy's own namespace: POD_NAMESPACE (set from
// the downward API in deploy/), else "pullbroker".
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "pullbroker"
}

func (f *rewriteFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.proxyHost, "proxy-host", "", "host[:port] under which nodes pull from the proxy, written into rewritten images (required; needs a '.' or ':' or must be localhost)")
	fs.StringSliceVar(&f.proxyAliases, "proxy-alias", nil, "other host[:port] names of the proxy; images already on them are left alone")
	fs.StringSliceVar(&f.registries, "registry", nil, "rewrite only these upstreams (names or aliases); default every configured upstream")
	fs.StringArrayVar(&f.rules, "rule", nil, "REGISTRY=PREFIX: send REGISTRY's images to PREFIX (host[:port][/path]) instead of <proxy-host>/<registry>; repeatable")
	fs.StringSliceVar(&f.excludeImages, "exclude-image", nil, "never rewrite images whose fully qualified name (docker.io/library/nginx, no tag) matches; * within a path component, ** across components")
	fs.StringSliceVar(&f.excludeNamespaces, "exclude-namespace", rewrite.DefaultExcludedNamespaces, "never rewrite Pods in these namespaces; --namespace is always added")
	fs.StringVar(&f.namespace, "namespace", defaultNamespace(), "the proxy's own namespace, never rewritten (its Pods must start without the proxy)")
	fs.BoolVar(&f.resolveTags, "resolve-tags", false, "pin tags to the digest the proxy serves, writing image:tag@sha256:…")
	fs.StringVar(&f.resolverURL, "resolver-url", "", "base URL at which the proxy answers tag resolutions, e.g. http://pullbroker.pullbroker.svc:5000 (default https://<proxy-host>)")
	fs.StringVar(&f.resolverCAFile, "resolver-ca-file", "", "CA bundle that verifies an https --resolver-url")
	fs.DurationVar(&f.resolveTimeout, "resolve-timeout", 3*time.Second, "time allowed for one tag resolution; the webhook also bounds all of a Pod's resolutions by it (keep it under the webhook's timeoutSeconds)")
}

func (f *rewriteFlags) rewriter(cfg *config.Config) (*rewrite.Rewriter, error) {
	if f.proxyHost == "" && len(f.rules) == 0 {
		return nil, fmt.Errorf("--proxy-host is required")
	}
	opts := rewrite.Options{
		ProxyHost:     f.proxyHost,
		ProxyAliases:  f.proxyAliases,
		Upstreams:     cfg.Upstreams,
		Registries:    f.registries,
		ExcludeImages: f.excludeImages,
	}
	for _, r := range f.rules {
		registry, prefix, ok := strings.Cut(r, "=")
		if !ok || registry == "" || prefix == "" {
			return nil, fmt.Errorf("--rule %q: want REGISTRY=PREFIX", r)
		}
		opts.Rules = append(opts.Rules, rewrite.Rule{Registry: registry, Prefix: prefix})
	}
	if f.resolveTags {
		client, err := resolverClient(f.resolverCAFile, f.resolveTimeout)
		if err != nil {
			return nil, err
		}
		opts.Resolver = &rewrite.HTTPResolver{Endpoint: f.resolverURL, Client: client}
	}
	return rewrite.New(opts)
}

func resolverClient(caFile string, timeout time.Duration) (*http.Client, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--resolver-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--resolver-ca-file %s: no PEM certificate", caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: transport, Timeout: timeout}, nil
}

func (f *rewriteFlags) podFilter() rewrite.PodFilter {
	namespaces := append([]string(nil), f.excludeNamespaces...)
	if f.namespace != "" {
		namespaces = append(namespaces, f.namespace)
	}
	return rewrite.PodFilter{ExcludeNamespaces: namespaces}
}

func newRewriteCmd() *cobra.Command {
	var flags rewriteFlags
	var in, out string
	cmd := &cobra.Command{
		Use:   "rewrite",
		Short: "Rewrite the images of Pods and workloads in YAML manifests to the proxy",
		Long: "Rewrite container images in multi-document YAML (Pod, Deployment, StatefulSet, DaemonSet,\n" +
			"ReplicaSet, ReplicationController, Job, CronJob, PodTemplate, v1 List) to the proxy's\n" +
			"image-prefix form, as the admission webhook would, for GitOps repositories that should name\n" +
			"the proxy themselves. Only image values change; everything else, comments included, is kept\n" +
			"byte for byte. Each change is reported on stderr.",
		Example: "  pullbroker rewrite --proxy-host pullbroker.example:5000 -f app.yaml > app.proxied.yaml\n" +
			"  kustomize build . | pullbroker rewrite --proxy-host localhost:30500 | kubectl apply -f -",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			rw, err := flags.rewriter(cfg)
			if err != nil {
				return err
			}
			var src []byte
			if in == "-" {
				src, err = io.ReadAll(cmd.InOrStdin())
			} else {
				src, err = os.ReadFile(in)
			}
			if err != nil {
				return err
			}
			result, changes, err := manifests.Rewrite(cmd.Context(), src, rw, flags.podFilter())
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			report := cmd.ErrOrStderr()
			for _, c := range changes {
				object := c.Object
				if c.Namespace != "" {
					object = c.Namespace + "/" + object
				}
				fmt.Fprintf(report, "%s:%d %s container %s: %s -> %s\n", in, c.Line, object, c.Container, c.From, c.To)
				if c.Warning != "" {
					fmt.Fprintf(report, "  warning: not pinned to a digest: %s\n", c.Warning)
				}
			}
			if out == "-" {
				_, err = cmd.OutOrStdout().Write(result)
				return err
			}
			return os.WriteFile(out, result, 0o644)
		},
	}
	flags.register(cmd.Flags())
	cmd.Flags().StringVarP(&in, "filename", "f", "-", "manifests to read; - is stdin")
	cmd.Flags().StringVarP(&out, "output", "o", "-", "where to write the result; - is stdout (may be the input file)")
	return cmd
}
