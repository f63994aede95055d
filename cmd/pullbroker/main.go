// Command pullbroker is an in-cluster pull-through registry. This package
// wires the others together and holds no logic of its own.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
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
	}
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
	)
	return root
}
