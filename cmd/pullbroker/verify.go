package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
)

func newVerifyCmd() *cobra.Command {
	var bytesPerSecond int64
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every cached blob and remove the corrupt ones",
		Long: "verify reads every blob and manifest in the cache storage, checks it against its digest, and\n" +
			"removes those that no longer match (a failing disk, a file truncated by a power loss): they\n" +
			"are fetched again when next pulled. It is safe to run while serve uses the same storage.\n" +
			"The exit status is 1 when corrupt blobs were found. serve runs the same check in the\n" +
			"background every storage.scrub.interval.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			store, err := openStoreForCommand(cmd, cfg, nil)
			if err != nil {
				return err
			}
			report, err := store.Scrub(cmd.Context(), bytesPerSecond)
			flushForLeader(cmd, store)
			out := cmd.OutOrStdout()
			for _, d := range report.Corrupt {
				fmt.Fprintf(out, "removed corrupt blob %s\n", d)
			}
			fmt.Fprintf(out, "verified %d blobs (%d bytes); %d corrupt removed\n", report.Blobs, report.Bytes, len(report.Corrupt))
			if err != nil {
				return fmt.Errorf("verify stopped: %w", err)
			}
			if len(report.Corrupt) > 0 {
				return fmt.Errorf("%d corrupt blobs were removed from the cache: check the storage", len(report.Corrupt))
			}
			return nil
		},
	}
	cmd.Flags().Int64Var(&bytesPerSecond, "bytes-per-second", 0, "cap the read rate (0: as fast as storage allows)")
	return cmd
}

// openStoreForCommand opens the cache storage of cfg for a one-shot
// command (verify, gc), whose own output is the report: the store logs only
// warnings and errors. roots, when set, are kept as Options.Roots.
func openStoreForCommand(cmd *cobra.Command, cfg *config.Config, roots func(context.Context) ([]cache.Root, error)) (*cache.Store, error) {
	driver, localRoot, err := cache.OpenDriver(cmd.Context(), cfg.Storage)
	if err != nil {
		return nil, err
	}
	opts := cache.Options{
		Logger:    newLogger(config.Log{Format: "text", Level: "warn"}, cmd.ErrOrStderr()),
		LocalRoot: localRoot, SpoolDir: cfg.Storage.SpoolDir,
		Roots: roots,
	}
	return cache.New(driver, opts)
}

// flushForLeader tells the serve process that leads (if any) what a
// command removed from the cache, so that its cache size drops now rather
// than at its next restart. A failure is worth a warning only.
func flushForLeader(cmd *cobra.Command, store *cache.Store) {
	if err := store.Flush(cmd.Context()); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v; the cache size that serve reports counts the removed blobs until it restarts\n", err)
	}
}
