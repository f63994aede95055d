package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/config"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// dockerConfigJSON builds {"auths": {loc: {"auth": base64(user:loc)}}}: the
// password of each entry is its own location, so a lookup shows which
// entry won.
func dockerConfigJSON(t *testing.T, locs ...string) []byte {
	t.Helper()
	auths := map[string]map[string]string{}
	for _, l := range locs {
		auths[l] = map[string]string{"auth": b64("u:" + l)}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeyringLookup follows kubelet's rules (pkg/credentialprovider):
// scheme and /v1/ or /v2/ stripped, globs per host label with the same
// number of labels, ports equal, key path a prefix of the image path, most
// specific key first, Docker Hub's https://index.docker.io/v1/ for docker.io.
func TestKeyringLookup(t *testing.T) {
	cases := []struct {
		name  string
		locs  []string
		image string
		want  string // the winning location, "" for no match
	}{
		{"exact host", []string{"ghcr.io"}, "ghcr.io/org/app", "ghcr.io"},
		{"https scheme stripped", []string{"https://ghcr.io"}, "ghcr.io/org/app", "https://ghcr.io"},
		{"http scheme stripped", []string{"http://registry.local:5000"}, "registry.local:5000/app", "http://registry.local:5000"},
		{"/v1/ stripped", []string{"https://quay.io/v1/"}, "quay.io/org/app", "https://quay.io/v1/"},
		{"/v2/ stripped", []string{"https://quay.io/v2/"}, "quay.io/org/app", "https://quay.io/v2/"},
		{"other host", []string{"ghcr.io"}, "quay.io/org/app", ""},
		{"docker hub v1 key for docker.io", []string{"https://index.docker.io/v1/"}, "docker.io/library/nginx", "https://index.docker.io/v1/"},
		{"docker hub v1 key for index.docker.io", []string{"https://index.docker.io/v1/"}, "index.docker.io/library/nginx", "https://index.docker.io/v1/"},
		{"docker hub bare key", []string{"index.docker.io"}, "docker.io/library/nginx", "index.docker.io"},
		{"docker.io key", []string{"docker.io"}, "docker.io/library/nginx", "docker.io"},
		{"docker hub creds not for others", []string{"https://index.docker.io/v1/"}, "ghcr.io/org/app", ""},
		{"docker hub creds not for localhost", []string{"https://index.docker.io/v1/"}, "localhost/app", ""},
		{"glob label", []string{"*.example.com"}, "registry.example.com/app", "*.example.com"},
		{"glob needs same label count", []string{"*.example.com"}, "example.com/app", ""},
		{"glob does not span labels", []string{"*.example.com"}, "a.b.example.com/app", ""},
		{"glob in the middle", []string{"registry.*.com"}, "registry.example.com/app", "registry.*.com"},
		{"glob partial label", []string{"reg-*.example.com"}, "reg-eu.example.com/app", "reg-*.example.com"},
		{"glob everything", []string{"*.*"}, "ghcr.io/app", "*.*"},
		{"port must match", []string{"registry.example.com:5000"}, "registry.example.com:5000/app", "registry.example.com:5000"},
		{"port missing in key", []string{"registry.example.com"}, "registry.example.com:5000/app", ""},
		{"port missing in image", []string{"registry.example.com:5000"}, "registry.example.com/app", ""},
		{"other port", []string{"registry.example.com:5000"}, "registry.example.com:5001/app", ""},
		{"glob host with port", []string{"*.example.com:443"}, "a.example.com:443/app", "*.example.com:443"},
		{"ip and port", []string{"127.0.0.1:5000"}, "127.0.0.1:5000/app", "127.0.0.1:5000"},
		{"path prefix", []string{"quay.io/team"}, "quay.io/team/app", "quay.io/team"},
		{"path prefix is a string prefix (kubelet)", []string{"quay.io/team"}, "quay.io/teamx/app", "quay.io/team"},
		{"path not a prefix", []string{"quay.io/team"}, "quay.io/other/app", ""},
		{"path with /v1/ stripped", []string{"https://quay.io/v1/team"}, "quay.io/team/app", "https://quay.io/v1/team"},
		{"path scoped key not for the registry root", []string{"quay.io/team"}, "quay.io/", ""},
		{"most specific path first", []string{"quay.io", "quay.io/team"}, "quay.io/team/app", "quay.io/team"},
		{"host when path differs", []string{"quay.io", "quay.io/team"}, "quay.io/other/app", "quay.io"},
		{"exact host before glob", []string{"*.example.com", "a.example.com"}, "a.example.com/app", "a.example.com"},
		{"glob when exact differs", []string{"*.example.com", "a.example.com"}, "b.example.com/app", "*.example.com"},
		{"match wins over docker hub fallback", []string{"https://index.docker.io/v1/", "docker.io"}, "docker.io/library/nginx", "docker.io"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kr, err := parseDockerConfig(dockerConfigJSON(t, c.locs...))
			if err != nil {
				t.Fatal(err)
			}
			got := kr.lookup(c.image)
			if c.want == "" {
				if len(got) != 0 {
					t.Fatalf("lookup(%q) = %q, want no match", c.image, got[0].Password)
				}
				return
			}
			if len(got) == 0 {
				t.Fatalf("lookup(%q): no match, want %q", c.image, c.want)
			}
			if got[0].Username != "u" || got[0].Password != c.want {
				t.Fatalf("lookup(%q) = %s:%s, want u:%s", c.image, got[0].Username, got[0].Password, c.want)
			}
		})
	}
}

func TestParseDockerConfigForms(t *testing.T) {
	cases := []struct {
		name, json, user, pass string
	}{
		{"auth padded", `{"auths":{"r.io":{"auth":"` + b64("alice:s3cr:et") + `"}}}`, "alice", "s3cr:et"},
		{"auth unpadded", `{"auths":{"r.io":{"auth":"` + strings.TrimRight(b64("al:pw"), "=") + `"}}}`, "al", "pw"},
		{"username password", `{"auths":{"r.io":{"username":"bob","password":"pw"}}}`, "bob", "pw"},
		{"auth wins", `{"auths":{"r.io":{"username":"bob","password":"pw","auth":"` + b64("carol:pw2") + `"}}}`, "carol", "pw2"},
		{"legacy dockercfg", `{"r.io":{"auth":"` + b64("dave:pw") + `","email":"d@x"}}`, "dave", "pw"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kr, err := parseDockerConfig([]byte(c.json))
			if err != nil {
				t.Fatal(err)
			}
			got := kr.lookup("r.io/app")
			if len(got) != 1 || got[0].Username != c.user || got[0].Password != c.pass {
				t.Fatalf("got %+v", got)
			}
		})
	}
	for _, bad := range []string{
		`{"auths":{"r.io":{"auth":"!!!"}}}`,
		`{"auths":{"r.io":{"auth":"` + b64("nocolon") + `"}}}`,
		`{"auths":[]}`,
		`{"auths":{}}`,
		`{"credsStore":"desktop"}`,
		`not json`,
	} {
		if _, err := parseDockerConfig([]byte(bad)); err == nil {
			t.Errorf("parseDockerConfig(%s): no error", bad)
		}
	}
}

// TestDockerConfigSource checks the source end to end: the upstream's name,
// aliases and endpoint host are tried, repository-scoped entries apply
// through Resolve, and a rewritten file takes effect.
func TestDockerConfigSource(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.json")
	write := func(b []byte) {
		t.Helper()
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	write(dockerConfigJSON(t, "https://index.docker.io/v1/", "docker.io/team"))
	up := config.Upstream{
		Name:        "docker.io",
		Endpoint:    "https://registry-1.docker.io",
		Credentials: &config.Credentials{DockerConfig: &config.DockerConfig{File: file}},
	}
	src, err := For(context.Background(), up, Options{FileCheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	expectAuth(t, src, "u", "https://index.docker.io/v1/")

	a, err := src.Resolve(fakeResource{"registry-1.docker.io", "team/app"})
	if err != nil {
		t.Fatal(err)
	}
	expectAuth(t, a, "u", "docker.io/team")
	a, _ = src.Resolve(fakeResource{"registry-1.docker.io", "library/nginx"})
	expectAuth(t, a, "u", "https://index.docker.io/v1/")

	// The endpoint host is tried after the name.
	write(dockerConfigJSON(t, "registry-1.docker.io"))
	expectAuth(t, src, "u", "registry-1.docker.io")

	// A file for another registry is refused; the last good one stays.
	write(dockerConfigJSON(t, "ghcr.io"))
	expectAuth(t, src, "u", "registry-1.docker.io")
	if src.Healthy() {
		t.Fatal("healthy after a config without a matching entry")
	}
	write(dockerConfigJSON(t, "docker.io"))
	expectAuth(t, src, "u", "docker.io")
	if !src.Healthy() {
		t.Fatal("not healthy after a good config")
	}

	// Only a path-scoped entry: the registry as a whole and other
	// repositories get no credentials (anonymous), that path gets them.
	write(dockerConfigJSON(t, "docker.io/team"))
	expectAuth(t, src, "", "")
	a, _ = src.Resolve(fakeResource{"registry-1.docker.io", "team/app"})
	expectAuth(t, a, "u", "docker.io/team")
	a, _ = src.Resolve(fakeResource{"registry-1.docker.io", "library/nginx"})
	expectAuth(t, a, "", "")

	// A missing file at start is an error naming the file.
	up.Credentials.DockerConfig.File = filepath.Join(dir, "nope.json")
	if _, err := For(context.Background(), up, Options{}); err == nil || !strings.Contains(err.Error(), "nope.json") {
		t.Fatalf("For with a missing file: %v", err)
	}
}

type fakeResource struct{ registry, repo string }

func (r fakeResource) String() string      { return r.registry + "/" + r.repo }
func (r fakeResource) RegistryStr() string { return r.registry }
