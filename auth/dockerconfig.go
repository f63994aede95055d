package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullbroker/pullbroker/config"
)

func (s *source) startDockerConfig(d *config.DockerConfig) error {
	if d.File == "" {
		return errors.New("dockerConfig: file is empty")
	}
	return s.startFileWatch("docker config file", d.File, func(data []byte) (material, error) {
		return s.keyringMaterial(data)
	})
}

// keyringMaterial parses a docker config and checks that it has a
// credential this upstream can use.
func (s *source) keyringMaterial(data []byte) (material, error) {
	kr, err := parseDockerConfig(data)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(s.names, kr.coversRegistry) {
		msg := fmt.Sprintf("no entry matches registry %s", strings.Join(s.names, " or "))
		if len(kr.empty) > 0 {
			msg += fmt.Sprintf(" (entries without credentials, as left by a credential helper, were ignored: %s)", strings.Join(kr.empty, ", "))
		}
		return nil, errors.New(msg)
	}
	return &keyringMaterial{kr: kr, names: s.names}, nil
}

type keyringMaterial struct {
	kr    *keyring
	names []string
}

func (k *keyringMaterial) authFor(_ context.Context, repo string) (*authn.AuthConfig, error) {
	for _, n := range k.names {
		if found := k.kr.lookup(n + "/" + repo); len(found) > 0 {
			a := found[0]
			return &a, nil
		}
	}
	// Only entries scoped to other paths: like kubelet, pull without
	// credentials rather than fail.
	return &authn.AuthConfig{}, nil
}

// keyring is a docker config indexed the way kubelet indexes one
// (k8s.io/kubernetes/pkg/credentialprovider, BasicDockerKeyring): keys are
// host[/path] with the scheme and a /v1/ or /v2/ prefix stripped, reverse
// sorted so the most specific key is tried first.
type keyring struct {
	index []string
	creds map[string][]authn.AuthConfig
	// empty are the keys of entries that carry no credential.
	empty []string
}

// defaultRegistryKey is the key Docker Hub credentials are stored under
// ("https://index.docker.io/v1/" once stripped).
const defaultRegistryKey = "index.docker.io"

type dockerConfigEntry struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	Auth          string `json:"auth"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// parseDockerConfig reads a docker config.json / .dockerconfigjson
// ({"auths": {...}}) or a legacy .dockercfg (the map alone).
func parseDockerConfig(data []byte) (*keyring, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, jsonError(err)
	}
	auths := top
	if raw, ok := top["auths"]; ok {
		auths = nil
		if err := json.Unmarshal(raw, &auths); err != nil {
			return nil, fmt.Errorf("auths: %w", jsonError(err))
		}
	} else if _, ok := top["credsStore"]; ok {
		auths = nil
	} else if _, ok := top["credHelpers"]; ok {
		auths = nil
	}
	if len(auths) == 0 {
		return nil, errors.New("has no auths entries (docker credential helpers are not supported)")
	}
	kr := &keyring{creds: map[string][]authn.AuthConfig{}}
	for loc, raw := range auths {
		var e dockerConfigEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("entry %q: %w", loc, jsonError(err))
		}
		a := authn.AuthConfig{
			Username:      e.Username,
			Password:      e.Password,
			IdentityToken: e.IdentityToken,
			RegistryToken: e.RegistryToken,
		}
		if e.Auth != "" {
			u, p, err := decodeAuthField(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("entry %q: auth field: %w", loc, err)
			}
			a.Username, a.Password = u, p
		}
		key, ok := keyringKey(loc)
		if !ok {
			// kubelet skips entries it cannot parse as a URL.
			continue
		}
		if a.Username == "" && a.Password == "" && a.IdentityToken == "" && a.RegistryToken == "" {
			kr.empty = append(kr.empty, loc)
			continue
		}
		kr.creds[key] = append(kr.creds[key], a)
	}
	for k := range kr.creds {
		kr.index = append(kr.index, k)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(kr.index)))
	sort.Strings(kr.empty)
	if len(kr.index) == 0 && len(kr.empty) == 0 {
		return nil, errors.New("has no usable auths entries")
	}
	return kr, nil
}

// keyringKey turns a docker config location ("https://index.docker.io/v1/",
// "quay.io/team", "*.example.com:5000") into kubelet's key.
func keyringKey(loc string) (string, bool) {
	v := loc
	if !strings.HasPrefix(v, "https://") && !strings.HasPrefix(v, "http://") {
		v = "https://" + v
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", false
	}
	p := u.Path
	if strings.HasPrefix(p, "/v2/") || strings.HasPrefix(p, "/v1/") {
		p = p[3:]
	}
	if p != "" && p != "/" {
		return u.Host + p, true
	}
	return u.Host, true
}

// decodeAuthField decodes base64(username:password), padded or not.
// Errors say what is wrong, never what was there.
func decodeAuthField(field string) (string, string, error) {
	f := strings.TrimSpace(field)
	enc := base64.RawStdEncoding
	if strings.HasSuffix(f, "=") {
		enc = base64.StdEncoding
	}
	dec, err := enc.DecodeString(f)
	if err != nil {
		return "", "", errors.New("is not base64")
	}
	u, p, ok := strings.Cut(string(dec), ":")
	if !ok {
		return "", "", errors.New("is not base64 of username:password")
	}
	return u, p, nil
}

// lookup returns the credentials for image (host[:port]/path), most specific
// first, by kubelet's rules: every key whose host matches label by label
// (filepath.Match globs per label, same number of labels, same port) and
// whose path is a prefix of the image's path; failing that, Docker Hub's
// credentials for a Docker Hub image.
func (k *keyring) lookup(image string) []authn.AuthConfig {
	var ret []authn.AuthConfig
	for _, key := range k.index {
		if urlsMatch(key, image) {
			ret = append(ret, k.creds[key]...)
		}
	}
	if len(ret) > 0 {
		return ret
	}
	if isDefaultRegistryMatch(image) {
		return k.creds[defaultRegistryKey]
	}
	return nil
}

// coversRegistry reports whether some entry could apply to an image at
// registry host (at its root or under a path).
func (k *keyring) coversRegistry(host string) bool {
	for _, key := range k.index {
		h, _, _ := strings.Cut(key, "/")
		if urlsMatch(h, host) {
			return true
		}
	}
	return isDefaultRegistryMatch(host+"/") && len(k.creds[defaultRegistryKey]) > 0
}

// isDefaultRegistryMatch reports whether image is pulled from Docker Hub.
// kubelet also counts a first component without "." or ":" ("ubuntu",
// "library/ubuntu", but also "localhost/x"): the images here always start
// with a registry host, so only Docker Hub's own names count.
func isDefaultRegistryMatch(image string) bool {
	first, _, _ := strings.Cut(image, "/")
	return first == "docker.io" || first == "index.docker.io"
}

func urlsMatch(glob, target string) bool {
	g, err := url.Parse("https://" + glob)
	if err != nil {
		return false
	}
	t, err := url.Parse("https://" + target)
	if err != nil {
		return false
	}
	gParts, gPort := splitHost(g.Host)
	tParts, tPort := splitHost(t.Host)
	if gPort != tPort || len(gParts) != len(tParts) {
		return false
	}
	if !strings.HasPrefix(t.Path, g.Path) {
		return false
	}
	for i, gp := range gParts {
		if ok, err := filepath.Match(gp, tParts[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

func splitHost(hostport string) ([]string, string) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, ""
	}
	return strings.Split(host, "."), port
}

// jsonError describes a JSON decoding error without quoting the input.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("is not valid JSON (syntax error at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		// typ.Value quotes a number literal: it may be the secret.
		want := "a value of another type"
		switch typ.Type.Kind() {
		case reflect.Map, reflect.Struct:
			want = "an object"
		case reflect.String:
			want = "a string"
		case reflect.Slice, reflect.Array:
			want = "a list"
		}
		if typ.Field != "" {
			return fmt.Errorf("is not the expected JSON: %s must be %s", typ.Field, want)
		}
		return fmt.Errorf("is not the expected JSON: want %s at byte %d", want, typ.Offset)
	default:
		return errors.New("is not valid JSON")
	}
}
