package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/rewrite/nodeconfig"
)

func newHostsCmd() *cobra.Command {
	var (
		opts       nodeconfig.Options
		dir        string
		format     string
		registries []string
	)
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "Write node mirror configuration: containerd hosts.toml files, or CRI-O registries.conf entries",
		Long: "Mirror mode: the container runtime keeps the image names Pods use and asks the proxy first.\n\n" +
			"--format containerd (default) writes <dir>/<registry>/hosts.toml for every configured upstream\n" +
			"and alias; containerd then sends /v2/<repository>/...?ns=<registry> to the proxy. Point\n" +
			"containerd's registry config_path at the directory (no restart needed).\n\n" +
			"--format crio prints [[registry]] entries for a drop-in such as\n" +
			"/etc/containers/registries.conf.d/50-pullbroker.conf; CRI-O then pulls\n" +
			"<proxy>/<registry>/<repository>.\n\n" +
			"Nodes resolve the proxy's name with their own DNS, not the cluster's: use a NodePort or\n" +
			"host-network address, or a name the nodes resolve.",
		Example: "  pullbroker hosts --proxy http://127.0.0.1:30500 --dir /etc/containerd/certs.d\n" +
			"  pullbroker hosts --proxy https://pullbroker.example:5000 --ca-file /etc/pullbroker/ca.crt --no-fallback\n" +
			"  pullbroker hosts --proxy http://127.0.0.1:30500 --format crio > /etc/containers/registries.conf.d/50-pullbroker.conf",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if opts.Upstreams, err = config.SelectUpstreams(cfg.Upstreams, registries); err != nil {
				return fmt.Errorf("--registry: %w", err)
			}
			switch format {
			case "crio":
				out, err := nodeconfig.CRIORegistries(opts)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			case "containerd":
				files, err := nodeconfig.ContainerdHosts(opts)
				if err != nil {
					return err
				}
				if dir == "-" {
					// One stream, each file after a comment naming its path.
					for _, f := range files {
						if _, err := fmt.Fprintf(cmd.OutOrStdout(), "# %s\n%s\n", f.Path, f.Content); err != nil {
							return err
						}
					}
					return nil
				}
				if err := nodeconfig.WriteFiles(dir, files); err != nil {
					return err
				}
				for _, f := range files {
					fmt.Fprintln(cmd.OutOrStdout(), filepath.Join(dir, f.Path))
				}
				return nil
			default:
				return fmt.Errorf("--format %q: want containerd or crio", format)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ProxyURL, "proxy", "", "the proxy as nodes reach it: http://host:port or https://host:port (required)")
	f.StringVar(&dir, "dir", "/etc/containerd/certs.d", "containerd's registry config_path, where <registry>/hosts.toml files go; - prints them to stdout")
	f.StringVar(&format, "format", "containerd", "containerd (write hosts.toml files) or crio (print registries.conf entries)")
	f.BoolVar(&opts.NoFallback, "no-fallback", false, "never pull from an upstream directly, even when the proxy fails (default: fall back)")
	f.DurationVar(&opts.DialTimeout, "dial-timeout", 2*time.Second, "containerd's dial_timeout for the proxy, so a down proxy falls back quickly (containerd 2.0+; 0 omits it)")
	f.BoolVar(&opts.SkipVerify, "skip-verify", false, "do not verify an https proxy's certificate")
	f.StringVar(&opts.CAFile, "ca-file", "", "CA bundle on the node that verifies an https proxy (containerd)")
	f.StringSliceVar(&registries, "registry", nil, "configure only these upstreams (names or aliases); default all")
	_ = cmd.MarkFlagRequired("proxy")
	return cmd
}
