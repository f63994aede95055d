// Command pullbroker is an in-cluster pull-through registry. This package
// wires the others together and holds no logic of its own.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/internal/version"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pullbroker:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "pullbroker",
		Short:         "In-cluster pull-through OCI registry that holds the upstream credentials",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Get().Version,
	}
	root.SetVersionTemplate("{{with .Version}}{{end}}" + version.Get().String())
	root.PersistentFlags().StringP("config", "c", "", "config file (YAML); the embedded default is used when empty")
	root.AddCommand(
		newServeCmd(),
		newPinCmd(),
		newSyncCmd(),
		newExportCmd(),
		newImportCmd(),
		newWebhookCmd(),
		newHostsCmd(),
		newRewriteCmd(),
		newVerifyCmd(),
		newGCCmd(),
		newVersionCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, build date and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), version.Get().String())
			return err
		},
	}
}
