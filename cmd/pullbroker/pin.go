package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/pullbroker/pullbroker/config"
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
	cmd.PersistentFlags().StringVar(&adminURL, "admin", "http://127.0.0.1:5001", "admin listener of the running proxy: a URL or host:port (default: admin.addr of --config)")
	cmd.PersistentFlags().StringVar(&tokenFile, "token-file", os.Getenv("PULLBROKER_ADMIN_TOKEN_FILE"), "file holding the admin bearer token (default: admin.tokenFile of --config)")
	client := func(cmd *cobra.Command) (*adminClient, error) {
		admin, tokenFrom := adminURL, "--token-file"
		// The proxy's own config says where its admin API listens and
		// which token guards it; explicit flags win.
		if path, _ := cmd.Flags().GetString("config"); path != "" {
			cfg, err := config.Load(path)
			if err != nil {
				return nil, err
			}
			if !cmd.Flags().Changed("admin") && cfg.Admin.Addr != "" {
				admin = cfg.Admin.Addr
			}
			if tokenFile == "" {
				tokenFile, tokenFrom = cfg.Admin.TokenFile, "admin.tokenFile in "+path
			}
		}
		if tokenFile == "" {
			return nil, fmt.Errorf("--token-file is required (the proxy's admin.tokenFile), or --config with admin.tokenFile")
		}
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tokenFrom, err)
		}
		base, err := adminBase(admin)
		if err != nil {
			return nil, err
		}
		return &adminClient{base: base, token: strings.TrimSpace(string(b)),
			http: &http.Client{Timeout: 2 * time.Minute}}, nil
	}
	// withClient gives a subcommand the admin client, built from the flags.
	withClient := func(run func(c *adminClient, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := client(cmd)
			if err != nil {
				return err
			}
			return run(c, cmd, args)
		}
	}

	var listFormat string
	list := &cobra.Command{
		Use: "list", Short: "List every pin", Args: cobra.NoArgs,
		RunE: withClient(func(c *adminClient, cmd *cobra.Command, _ []string) error {
			pins, err := c.list()
			if err != nil {
				return err
			}
			switch listFormat {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(map[string][]tags.Pin{"pins": pins})
			case "", "table":
			default:
				return fmt.Errorf("--output %q: want table or json", listFormat)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tPOLICY\tPINNED")
			for _, p := range pins {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Image(), p.Digest, p.Policy, p.PinnedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	}
	list.Flags().StringVarP(&listFormat, "output", "o", "table", "table or json (the admin API's {\"pins\": [...]})")
	cmd.AddCommand(list)
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
			err := c.do(http.MethodDelete, "/api/v1/pins/"+args[0], nil, nil)
			if ae := (*adminError)(nil); errors.As(err, &ae) && ae.status == http.StatusNotFound {
				return fmt.Errorf("%s is not pinned: nothing removed (pullbroker pin list shows the pins)", args[0])
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s unpinned\n", args[0])
			return nil
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

// adminError is a non-2xx answer of the admin API.
type adminError struct {
	status int
	msg    string
}

func (e *adminError) Error() string { return e.msg }

// adminBase turns --admin or admin.addr into the API's base URL: a URL
// stays as it is; host:port gets http://, and a listener on every address
// (":5001", "0.0.0.0:5001") is reached on 127.0.0.1.
func adminBase(admin string) (string, error) {
	if strings.Contains(admin, "://") {
		return strings.TrimSuffix(admin, "/"), nil
	}
	host, port, err := net.SplitHostPort(admin)
	if err != nil {
		return "", fmt.Errorf("--admin %q: want a URL (http://127.0.0.1:5001) or host:port: %w", admin, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
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
		return &adminError{status: resp.StatusCode, msg: fmt.Sprintf("admin API: %s: %s", resp.Status, e.Error)}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
