// Package nodeconfig writes the node-side configuration of mirror mode: the
// container runtime keeps the image names Pods give and asks pullbroker
// first. containerd reads one hosts.toml per registry from its config_path
// (see containerd's docs/hosts.md) and sends the registry in a ?ns= query
// parameter; CRI-O reads [[registry.mirror]] entries from registries.conf
// and, having no ?ns=, is sent to the proxy's image-prefix form.
package nodeconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/distribution/reference"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/registryname"
)

// Options describe how nodes reach the proxy.
type Options struct {
	// ProxyURL is the proxy as nodes reach it: "http://10.0.0.5:30500",
	// "https://pullbroker.example:5000". Nodes resolve names with their
	// own DNS, not the cluster's.
	ProxyURL string
	// Upstreams are the registries to configure, with their aliases.
	Upstreams []config.Upstream
	// NoFallback makes the proxy the only place a registry's images come
	// from. By default the runtime falls back to the upstream itself when
	// the proxy fails, which keeps nodes pulling while the proxy is down
	// but bypasses it (and its credentials) then.
	NoFallback bool
	// DialTimeout bounds the connection to the proxy, so that a fallback
	// comes quickly when it is down. containerd 2.0 and later read it;
	// older versions ignore it. 0 leaves containerd's default (30 s).
	DialTimeout time.Duration
	// SkipVerify trusts an https proxy without verifying its certificate.
	SkipVerify bool
	// CAFile is the CA bundle, as a path on the node, that verifies an
	// https proxy (containerd only; CRI-O reads
	// /etc/containers/certs.d/<host:port>/*.crt).
	CAFile string
}

// proxyURL checks ProxyURL: http or https, a host, no path (the proxy serves
// /v2/ at its root).
func (o Options) proxyURL() (*url.URL, error) {
	u, err := url.Parse(o.ProxyURL)
	if err != nil {
		return nil, fmt.Errorf("proxy URL %q: %w", o.ProxyURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("proxy URL %q: want http://host[:port] or https://host[:port]", o.ProxyURL)
	}
	u.Path = ""
	if u.Scheme == "http" && (o.SkipVerify || o.CAFile != "") {
		return nil, errors.New("skip-verify and a CA file apply to an https proxy only")
	}
	return u, nil
}

// registry is one registry name a runtime may see, and the upstream it
// belongs to.
type registry struct {
	name     string
	upstream config.Upstream
}

// registries lists every upstream name and alias a runtime can see. An alias
// that the runtimes normalize away ("index.docker.io" is always read as
// "docker.io") never reaches a lookup and gets no entry.
func registries(upstreams []config.Upstream) []registry {
	var out []registry
	seen := map[string]bool{}
	for _, u := range upstreams {
		for _, name := range append([]string{u.Name}, u.Aliases...) {
			if seen[name] {
				continue
			}
			seen[name] = true
			named, err := reference.ParseNormalizedNamed(name + "/x")
			if err != nil || reference.Domain(named) != name {
				continue
			}
			out = append(out, registry{name: name, upstream: u})
		}
	}
	return out
}

// File is one generated file.
type File struct {
	// Path is relative to containerd's config_path: "<registry>/hosts.toml".
	Path    string
	Content []byte
}

// ContainerdHosts returns a hosts.toml for every upstream name and alias.
func ContainerdHosts(o Options) ([]File, error) {
	proxy, err := o.proxyURL()
	if err != nil {
		return nil, err
	}
	var files []File
	for _, r := range registries(o.Upstreams) {
		var b strings.Builder
		fmt.Fprintf(&b, "# Written by `pullbroker hosts`: containerd asks pullbroker for %s images first,\n", r.name)
		fmt.Fprintf(&b, "# naming the registry in a ?ns=%s query parameter.\n", r.name)
		if o.NoFallback {
			// The proxy is the server as well as the host: containerd
			// 1.x ignores a hosts.toml without a [host] table, so
			// "server" alone would silently restore the upstream.
			b.WriteString("# No fallback: the proxy is also the server, so the upstream is never asked directly.\n")
			fmt.Fprintf(&b, "server = %s\n", tomlString(proxy.String()))
			writeHostSettings(&b, o, "")
		} else if r.upstream.Endpoint != "" {
			b.WriteString("# When pullbroker fails, containerd falls back to the upstream itself.\n")
			fmt.Fprintf(&b, "server = %s\n", tomlString(r.upstream.Endpoint))
		}
		fmt.Fprintf(&b, "\n[host.%s]\n", tomlString(proxy.String()))
		writeHostSettings(&b, o, "  ")
		files = append(files, File{Path: filepath.Join(r.name, "hosts.toml"), Content: []byte(b.String())})
	}
	if len(files) == 0 {
		return nil, errors.New("no upstream registries to configure")
	}
	return files, nil
}

func writeHostSettings(b *strings.Builder, o Options, indent string) {
	// resolve is trusted: pullbroker answers tags from its pins and cache,
	// which is the point of asking it. push is left out: it is a pull-only
	// proxy.
	fmt.Fprintf(b, "%scapabilities = [\"pull\", \"resolve\"]\n", indent)
	// A plain-http proxy needs nothing more than the http:// scheme; adding
	// skip_verify to it would make containerd try TLS first on every
	// connection (docs/hosts.md, "Bypass TLS Verification").
	if o.SkipVerify {
		fmt.Fprintf(b, "%sskip_verify = true\n", indent)
	}
	if o.CAFile != "" {
		fmt.Fprintf(b, "%sca = %s\n", indent, tomlString(o.CAFile))
	}
	if o.DialTimeout > 0 {
		fmt.Fprintf(b, "%sdial_timeout = %s\n", indent, tomlString(o.DialTimeout.String()))
	}
}

// tomlString quotes s as a TOML basic string. JSON's string escapes are a
// subset of TOML's.
func tomlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// WriteFiles writes the files under dir, each atomically (a temporary file
// renamed into place): containerd reads hosts.toml on every pull, with no
// restart, and must never see half a file.
func WriteFiles(dir string, files []File) error {
	for _, f := range files {
		path := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		tmp, err := os.CreateTemp(filepath.Dir(path), ".hosts.toml.*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(f.Content)
		cerr := tmp.Close()
		if werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Chmod(tmp.Name(), 0o644)
		}
		if werr == nil {
			werr = os.Rename(tmp.Name(), path)
		}
		if werr != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("writing %s: %w", path, werr)
		}
	}
	return nil
}

// CRIORegistries returns registries.conf (v2) entries that send every
// upstream name and alias to the proxy's image-prefix form, for a drop-in
// such as /etc/containers/registries.conf.d/50-pullbroker.conf. A prefix
// may appear only once across all of CRI-O's files.
func CRIORegistries(o Options) ([]byte, error) {
	proxy, err := o.proxyURL()
	if err != nil {
		return nil, err
	}
	if o.CAFile != "" {
		return nil, errors.New("CRI-O takes an https proxy's CA from /etc/containers/certs.d/<host:port>/ca.crt, not from registries.conf")
	}
	// containers/image's "insecure" allows both plain http and an
	// unverified certificate.
	insecure := proxy.Scheme == "http" || o.SkipVerify
	var b strings.Builder
	b.WriteString("# Written by `pullbroker hosts --format crio`: CRI-O pulls through pullbroker.\n")
	if o.NoFallback {
		b.WriteString("# No fallback: the proxy is each registry's only location.\n")
	} else {
		b.WriteString("# When pullbroker fails, CRI-O falls back to the upstream itself.\n")
	}
	regs := registries(o.Upstreams)
	if len(regs) == 0 {
		return nil, errors.New("no upstream registries to configure")
	}
	for _, r := range regs {
		component, err := registryname.ToPathComponent(r.upstream.Name)
		if err != nil {
			return nil, err
		}
		location := proxy.Host + "/" + component
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %s\n", tomlString(r.name))
		if o.NoFallback {
			fmt.Fprintf(&b, "location = %s\n", tomlString(location))
			if insecure {
				b.WriteString("insecure = true\n")
			}
			continue
		}
		fmt.Fprintf(&b, "location = %s\n", tomlString(r.name))
		fmt.Fprintf(&b, "\n[[registry.mirror]]\nlocation = %s\n", tomlString(location))
		if insecure {
			b.WriteString("insecure = true\n")
		}
	}
	return []byte(b.String()), nil
}
