package nodeconfig

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/pullbroker/pullbroker/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func testUpstreams() []config.Upstream {
	return append(config.PublicUpstreams(),
		config.Upstream{Name: "registry.example.com:5000", Endpoint: "http://10.1.2.3:5000"},
	)
}

// containerdHosts mirrors the fields containerd reads from hosts.toml
// (remotes/docker/config in containerd 1.7 and 2.x).
type containerdHost struct {
	Capabilities []string `toml:"capabilities"`
	SkipVerify   *bool    `toml:"skip_verify"`
	CA           any      `toml:"ca"`
	DialTimeout  string   `toml:"dial_timeout"`
}

type containerdHostsFile struct {
	Server string `toml:"server"`
	containerdHost
	Host map[string]containerdHost `toml:"host"`
}

func TestContainerdHosts(t *testing.T) {
	for name, opts := range map[string]Options{
		"http-fallback": {ProxyURL: "http://10.0.0.5:30500", DialTimeout: 2 * time.Second},
		"https-nofallback": {
			ProxyURL: "https://pullbroker.example:5000/", NoFallback: true,
			CAFile: "/etc/pullbroker/ca.crt", DialTimeout: time.Second,
		},
		"https-skipverify": {ProxyURL: "https://pullbroker.example:5000", SkipVerify: true},
	} {
		t.Run(name, func(t *testing.T) {
			opts.Upstreams = testUpstreams()
			files, err := ContainerdHosts(opts)
			if err != nil {
				t.Fatal(err)
			}
			var all bytes.Buffer
			var paths []string
			for _, f := range files {
				paths = append(paths, f.Path)
				all.WriteString("=== " + f.Path + "\n")
				all.Write(f.Content)

				// Valid TOML, read with containerd's field names.
				dec := toml.NewDecoder(bytes.NewReader(f.Content))
				dec.DisallowUnknownFields()
				var parsed containerdHostsFile
				if err := dec.Decode(&parsed); err != nil {
					t.Fatalf("%s: %v\n%s", f.Path, err, f.Content)
				}
				proxy := strings.TrimSuffix(opts.ProxyURL, "/")
				host, ok := parsed.Host[proxy]
				if !ok || len(parsed.Host) != 1 {
					t.Errorf("%s: hosts %v, want only %s", f.Path, parsed.Host, proxy)
				}
				if strings.Join(host.Capabilities, ",") != "pull,resolve" {
					t.Errorf("%s: capabilities %v", f.Path, host.Capabilities)
				}
				if opts.NoFallback && parsed.Server != proxy {
					t.Errorf("%s: server %q, want the proxy when there is no fallback", f.Path, parsed.Server)
				}
			}
			// index.docker.io is normalized to docker.io before containerd
			// looks for a hosts directory: it gets none.
			want := "docker.io/hosts.toml registry-1.docker.io/hosts.toml ghcr.io/hosts.toml gcr.io/hosts.toml quay.io/hosts.toml " +
				"registry.k8s.io/hosts.toml public.ecr.aws/hosts.toml registry.example.com:5000/hosts.toml"
			if got := strings.Join(paths, " "); got != want {
				t.Errorf("files %s, want %s", got, want)
			}
			golden(t, "containerd-"+name+".golden", all.Bytes())
		})
	}
}

func TestCRIORegistries(t *testing.T) {
	for name, opts := range map[string]Options{
		"http-fallback":    {ProxyURL: "http://10.0.0.5:30500"},
		"https-nofallback": {ProxyURL: "https://pullbroker.example:5000", NoFallback: true},
	} {
		t.Run(name, func(t *testing.T) {
			opts.Upstreams = testUpstreams()
			out, err := CRIORegistries(opts)
			if err != nil {
				t.Fatal(err)
			}
			var parsed struct {
				Registry []struct {
					Prefix   string `toml:"prefix"`
					Location string `toml:"location"`
					Insecure bool   `toml:"insecure"`
					Mirror   []struct {
						Location string `toml:"location"`
						Insecure bool   `toml:"insecure"`
					} `toml:"mirror"`
				} `toml:"registry"`
			}
			dec := toml.NewDecoder(bytes.NewReader(out))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&parsed); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			byPrefix := map[string]string{}
			for _, r := range parsed.Registry {
				loc := r.Location
				if len(r.Mirror) == 1 {
					loc = r.Mirror[0].Location
				}
				byPrefix[r.Prefix] = loc
			}
			host := strings.TrimPrefix(strings.TrimPrefix(opts.ProxyURL, "http://"), "https://")
			for prefix, want := range map[string]string{
				"docker.io":                 host + "/docker.io",
				"registry-1.docker.io":      host + "/docker.io",
				"ghcr.io":                   host + "/ghcr.io",
				"registry.example.com:5000": host + "/registry.example.com_5000",
			} {
				if byPrefix[prefix] != want {
					t.Errorf("prefix %s goes to %q, want %q", prefix, byPrefix[prefix], want)
				}
			}
			golden(t, "crio-"+name+".golden", out)
		})
	}
}

func TestOptionsRejected(t *testing.T) {
	for name, o := range map[string]Options{
		"no scheme":              {ProxyURL: "10.0.0.5:30500"},
		"a path":                 {ProxyURL: "http://10.0.0.5:30500/v2"},
		"other scheme":           {ProxyURL: "ftp://10.0.0.5"},
		"skip-verify over http":  {ProxyURL: "http://10.0.0.5:30500", SkipVerify: true},
		"credentials in the URL": {ProxyURL: "http://u:p@10.0.0.5:30500"},
		"no upstreams":           {ProxyURL: "http://10.0.0.5:30500", Upstreams: []config.Upstream{}},
	} {
		if o.Upstreams == nil {
			o.Upstreams = testUpstreams()
		}
		if _, err := ContainerdHosts(o); err == nil {
			t.Errorf("%s: ContainerdHosts accepted %+v", name, o)
		}
		if _, err := CRIORegistries(o); err == nil {
			t.Errorf("%s: CRIORegistries accepted %+v", name, o)
		}
	}
	if _, err := CRIORegistries(Options{ProxyURL: "https://p.example", CAFile: "/ca.crt", Upstreams: testUpstreams()}); err == nil {
		t.Error("CRIORegistries accepted a CA file it cannot express")
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	files, err := ContainerdHosts(Options{ProxyURL: "http://10.0.0.5:30500", Upstreams: testUpstreams()})
	if err != nil {
		t.Fatal(err)
	}
	// Twice: the second run replaces the files in place.
	for range 2 {
		if err := WriteFiles(dir, files); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil || !bytes.Equal(got, f.Content) {
			t.Errorf("%s: %v", f.Path, err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*", ".hosts.toml.*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}
