package main

import (
	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/config"
)

func newServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the registry proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, _ := cmd.Flags().GetString("config")
			_, err := config.Load(path)
			return err
		},
	}
}
