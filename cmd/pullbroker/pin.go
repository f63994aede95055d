package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/pullbroker/pullbroker/tags"
)

// adminClient talks to a running proxy's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func newPinCmd() *cobra.Command {
	var adminURL, tokenFile string
	cmd := &cobra.Command{
		Use:   "pin",
		Short: "List, set, remove, refresh, export and import tag pins of a running proxy",
		Long: "Pins bind registry/repository:tag to a digest: the proxy answers a pinned tag with no\n" +
			"upstream request, always with the same digest, until the pin is changed on purpose.",
	}
	cmd.PersistentFlags().StringVar(&adminURL, "admin", "http://127.0.0.1:5001", "admin listener of the running proxy")
	cmd.PersistentFlags().StringVar(&tokenFile, "token-file", os.Getenv("PULLBROKER_ADMIN_TOKEN_FILE"), "file holding the admin bearer token (admin.tokenFile of the proxy)")
	client := func() (*adminClient, error) {
		if tokenFile == "" {
			return nil, fmt.Errorf("--token-file is required (the proxy's admin.tokenFile)")
		}
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		return &adminClient{base: strings.TrimSuffix(adminURL, "/"), token: strings.TrimSpace(string(b)),
			http: &http.Client{Timeout: 2 * time.Minute}}, nil
	}
	// withClient gives a subcommand the admin client, built from the flags.
	withClient := func(run func(c *adminClient, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			return run(c, cmd, args)
		}
	}

	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List every pin", Args: cobra.NoArgs,
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, _ []string) error {
			pins, err := c.list()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tPOLICY\tPINNED")
			for _, p := range pins {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Image(), p.Digest, p.Policy, p.PinnedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use: "set IMAGE[:TAG] [DIGEST]", Short: "Pin a tag to a digest, or to what the upstream resolves it to now",
		Args: cobra.RangeArgs(1, 2),
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, args []string) error {
			var d digest.Digest
			if len(args) == 2 {
				var err error
				if d, err = digest.Parse(args[1]); err != nil {
					return fmt.Errorf("digest %q: %w", args[1], err)
				}
			}
			var pin tags.Pin
			if err := c.do(http.MethodPut, "/api/v1/pins/"+args[0], map[string]digest.Digest{"digest": d}, &pin); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s pinned to %s\n", pin.Image(), pin.Digest)
			return nil
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use: "rm IMAGE[:TAG]", Short: "Remove a pin; the tag is resolved by its rule again", Args: cobra.ExactArgs(1),
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, args []string) error {
			return c.do(http.MethodDelete, "/api/v1/pins/"+args[0], nil, nil)
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use: "refresh IMAGE[:TAG]", Short: "Resolve a tag upstream now and move its pin; reports old and new digest", Args: cobra.ExactArgs(1),
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, args []string) error {
			var res tags.Refresh
			if err := c.do(http.MethodPost, "/api/v1/refresh/"+args[0], nil, &res); err != nil {
				return err
			}
			if res.Changed {
				fmt.Fprintf(cmd.OutOrStdout(), "%s changed: %s -> %s\n", res.Image, orNone(res.Old), res.New)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s unchanged: %s\n", res.Image, res.New)
			}
			return nil
		}),
	})
	var output string
	export := &cobra.Command{
		Use: "export", Short: "Write every pin as a lock file that a locked pin rule reads", Args: cobra.NoArgs,
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, _ []string) error {
			pins, err := c.list()
			if err != nil {
				return err
			}
			lf := tags.LockFile{Pins: map[string]digest.Digest{}}
			for _, p := range pins {
				lf.Pins[p.Image().String()] = p.Digest
			}
			b, err := yaml.Marshal(lf)
			if err != nil {
				return err
			}
			b = append([]byte("# pullbroker lock file: image -> digest. Read by pin rules with policy: locked.\n"), b...)
			if output == "" || output == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			return os.WriteFile(output, b, 0o644)
		}),
	}
	export.Flags().StringVarP(&output, "output", "o", "", "lock file to write (default stdout)")
	cmd.AddCommand(export)
	cmd.AddCommand(&cobra.Command{
		Use: "import LOCKFILE", Short: "Pin every tag of a lock file to its digest", Args: cobra.ExactArgs(1),
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			lf, err := tags.DecodeLockFile(b)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			images := make([]string, 0, len(lf.Pins))
			for img := range lf.Pins {
				images = append(images, img)
			}
			sort.Strings(images)
			for _, img := range images {
				if err := c.do(http.MethodPut, "/api/v1/pins/"+img, map[string]digest.Digest{"digest": lf.Pins[img]}, nil); err != nil {
					return fmt.Errorf("%s: %w", img, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s pinned to %s\n", img, lf.Pins[img])
			}
			return nil
		}),
	})
	return cmd
}

func orNone(d digest.Digest) string {
	if d == "" {
		return "(none)"
	}
	return d.String()
}

func (c *adminClient) list() ([]tags.Pin, error) {
	var out struct {
		Pins []tags.Pin `json:"pins"`
	}
	err := c.do(http.MethodGet, "/api/v1/pins", nil, &out)
	return out.Pins, err
}

func (c *adminClient) do(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.base + (&url.URL{Path: path}).EscapedPath()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
