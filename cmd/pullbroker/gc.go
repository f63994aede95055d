package main

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
)

func newGCCmd() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove cached blobs that no tag record, pin or lock file references",
		Long: "gc marks every manifest a tag record, a pin or a locked rule's lock file names, and what\n" +
			"those manifests reference (an index's manifests, their configs and layers), then removes\n" +
			"every other blob that was not committed within storage.gc.grace: images pulled only by\n" +
			"digest, the old digests of moved tags. It is safe to run while serve uses the same storage\n" +
			"and clients pull: what is pulled by tag is referenced, and a blob removed while an image is\n" +
			"pulled by digest is fetched again from the upstream. serve can run it on a schedule\n" +
			"(storage.gc.interval), where blobs read recently are kept too. --dry-run lists what would\n" +
			"be removed and removes nothing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			locked, err := tags.LockedRoots(cfg)
			if err != nil {
				return err
			}
			kept := &keptImages{locked: locked}
			store, err := openStoreForCommand(cmd, cfg, kept.roots)
			if err != nil {
				return err
			}
			kept.watchPods(cfg, store, newLogger(config.Log{Format: "text", Level: "warn"}, cmd.ErrOrStderr()), prometheus.NewRegistry())
			if kept.running != nil {
				if err := kept.running.Start(cmd.Context()); err != nil {
					return fmt.Errorf("cache.keepRunningImages: %w", err)
				}
			}
			start := time.Now()
			report, err := store.GC(cmd.Context(), cfg.Storage.GC.Grace, dryRun)
			flushForLeader(cmd, store)
			out := cmd.OutOrStdout()
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			for _, b := range report.Removed {
				fmt.Fprintf(out, "%s %s (%d bytes)\n", verb, b.Digest, b.Size)
			}
			if err != nil {
				return fmt.Errorf("gc stopped after %d blobs: %w", len(report.Removed), err)
			}
			fmt.Fprintf(out, "%s %d unreferenced blobs (%d bytes); %d referenced digests kept, %d unreferenced kept for being younger than storage.gc.grace (%s); took %s\n",
				verb, len(report.Removed), report.Bytes, report.Marked, report.Young, cfg.Storage.GC.Grace, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be removed; remove nothing")
	return cmd
}
