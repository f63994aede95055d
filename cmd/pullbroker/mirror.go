package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/mirror"
)

func newSyncCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "sync -f images.yaml",
		Short: "Fetch a list of images into the cache and pin their tags",
		Long: "Pulls each image (all platforms, or the ones listed) through the proxy's own request path into\n" +
			"the storage of --config, verifying every digest, and pins each tag. Idempotent; an interrupted\n" +
			"sync resumes where it stopped. Point --config at the running proxy's config to seed its cache.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			list, err := mirror.ReadImageList(cfg, file)
			if err != nil {
				return err
			}
			a, err := buildForCommand(cmd, cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			results, err := mirror.Sync(cmd.Context(), cfg, a.handler.InProcess(), a.tags, list, cmd.OutOrStdout())
			failed := 0
			var bytes int64
			for _, r := range results {
				if r.Err != nil {
					failed++
				}
				bytes += r.Bytes
			}
			fmt.Fprintf(cmd.OutOrStdout(), "synced %d of %d images (%d MiB read through the cache)\n", len(results)-failed, len(list.Images), bytes>>20)
			if err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d images failed; run sync again to retry them", failed, len(list.Images))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "image list (YAML): images: [ref, {image: ref, platforms: [linux/amd64]}], platforms: [...]")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func newExportCmd() *cobra.Command {
	var output string
	var pinned, offline bool
	cmd := &cobra.Command{
		Use:   "export [IMAGE...] -o DIR|FILE.tar",
		Short: "Write images (or every pinned tag) to an OCI image layout directory or tar",
		RunE: func(cmd *cobra.Command, images []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			if offline {
				cfg.Mode = config.ModeOffline
				for i := range cfg.Upstreams {
					cfg.Upstreams[i].Mode = ""
				}
			}
			a, err := buildForCommand(cmd, cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			if pinned {
				pins, err := a.tags.Pins(cmd.Context())
				if err != nil {
					return err
				}
				for _, p := range pins {
					images = append(images, p.Image().String())
				}
			}
			if len(images) == 0 {
				return fmt.Errorf("name images to export, or --pinned")
			}
			return mirror.Export(cmd.Context(), cfg, a.handler.InProcess(), images, output, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "OCI image layout directory, or a file ending in .tar")
	cmd.Flags().BoolVar(&pinned, "pinned", false, "export every pinned tag")
	cmd.Flags().BoolVar(&offline, "offline", false, "export only what the cache holds; never contact an upstream")
	_ = cmd.MarkFlagRequired("output")
	return cmd
}

func newImportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "import DIR|FILE.tar",
		Short: "Load an OCI image layout into the cache, verifying every digest, and pin its tags",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			a, err := buildForCommand(cmd, cfg)
			if err != nil {
				return err
			}
			defer a.Close()
			n, err := mirror.Import(cmd.Context(), cfg, a.store, a.tags, args[0], cmd.OutOrStdout())
			fmt.Fprintf(cmd.OutOrStdout(), "imported %d images\n", n)
			return err
		},
	}
}

// buildForCommand assembles the proxy for a one-shot command, whose own
// output is the progress: the proxy's log shows only warnings and errors.
func buildForCommand(cmd *cobra.Command, cfg *config.Config) (*app, error) {
	return build(cmd.Context(), cfg, newLogger(config.Log{Format: "text", Level: "warn"}, cmd.ErrOrStderr()))
}
