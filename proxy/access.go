package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"golang.org/x/crypto/bcrypt"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/glob"
)

// access decides who may pull what. The proxy holds upstream credentials,
// so anyone who reaches it could read private images: operators limit the
// source networks, may require client credentials, and list the
// repositories each upstream may serve.
type access struct {
	networks     []netip.Prefix
	htpasswd     *credentialFile
	tokens       *credentialFile
	repositories map[string][]glob.Pattern // by upstream name; absent = all
}

func newAccess(cfg *config.Config) (*access, error) {
	a := &access{repositories: map[string][]glob.Pattern{}}
	for i, cidr := range cfg.Access.AllowedNetworks {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("access.allowedNetworks[%d]: %w", i, err)
		}
		a.networks = append(a.networks, p.Masked())
	}
	if f := cfg.Access.HtpasswdFile; f != "" {
		a.htpasswd = &credentialFile{path: f}
		if _, err := a.htpasswd.load(); err != nil {
			return nil, fmt.Errorf("access.htpasswdFile: %w", err)
		}
	}
	if f := cfg.Access.TokensFile; f != "" {
		a.tokens = &credentialFile{path: f}
		if _, err := a.tokens.load(); err != nil {
			return nil, fmt.Errorf("access.tokensFile: %w", err)
		}
	}
	for _, u := range cfg.Upstreams {
		for i, g := range u.Repositories {
			p, err := glob.Compile(g)
			if err != nil {
				return nil, fmt.Errorf("upstreams[%s].repositories[%d]: %w", u.Name, i, err)
			}
			a.repositories[u.Name] = append(a.repositories[u.Name], p)
		}
	}
	return a, nil
}

func (a *access) credentialsConfigured() bool { return a.htpasswd != nil || a.tokens != nil }

// checkClient admits a client from an allowed network, or one that
// presents valid client credentials. Only the connection's own address
// counts: forwarding headers are the client's to forge.
func (a *access) checkClient(r *http.Request) *apiError {
	if a.inAllowedNetwork(r.RemoteAddr) {
		return nil
	}
	if !a.credentialsConfigured() {
		return newAPIError(http.StatusForbidden, errcode.ErrorCodeDenied,
			"pulls from %s are not allowed: the address is outside access.allowedNetworks", hostOf(r.RemoteAddr))
	}
	if a.validCredentials(r) {
		return nil
	}
	return newAPIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized,
		"authentication required: log in with a pullbroker client user or send a client bearer token")
}

func (a *access) inAllowedNetwork(remoteAddr string) bool {
	if len(a.networks) == 0 {
		return !a.credentialsConfigured()
	}
	ip, err := netip.ParseAddr(hostOf(remoteAddr))
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range a.networks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (a *access) validCredentials(r *http.Request) bool {
	if user, pass, ok := r.BasicAuth(); ok && a.htpasswd != nil {
		return a.htpasswd.checkPassword(user, pass)
	}
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && a.tokens != nil {
		return a.tokens.checkToken(token)
	}
	return false
}

// allowRepository applies the upstream's repository globs.
func (a *access) allowRepository(rt *route) *apiError {
	if a.allows(rt.registry, rt.repository) {
		return nil
	}
	return newAPIError(http.StatusForbidden, errcode.ErrorCodeDenied,
		"repository %s of upstream %s is not allowed by upstreams[%s].repositories", rt.repository, rt.registry, rt.registry)
}

// allows reports whether the upstream's repository globs admit repo.
func (a *access) allows(registry, repo string) bool {
	globs, limited := a.repositories[registry]
	return !limited || slices.ContainsFunc(globs, func(g glob.Pattern) bool { return g.Match(repo) })
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// credentialFile is an htpasswd or token file, re-read when it changes so
// that users and tokens rotate without a restart.
type credentialFile struct {
	path string

	mu      sync.Mutex
	modTime time.Time
	size    int64
	lines   []string
	// verified caches bcrypt successes: bcrypt costs tens of
	// milliseconds, and a pull makes dozens of requests.
	verified map[string][32]byte
}

func (f *credentialFile) load() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		if f.lines != nil {
			return f.lines, nil // keep the last good content
		}
		return nil, err
	}
	if fi.ModTime().Equal(f.modTime) && fi.Size() == f.size && f.lines != nil {
		return f.lines, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		if f.lines != nil {
			return f.lines, nil
		}
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	f.lines, f.modTime, f.size, f.verified = lines, fi.ModTime(), fi.Size(), map[string][32]byte{}
	return lines, nil
}

func (f *credentialFile) checkPassword(user, pass string) bool {
	lines, err := f.load()
	if err != nil {
		return false
	}
	sum := sha256.Sum256([]byte(user + "\x00" + pass))
	f.mu.Lock()
	cached, ok := f.verified[user]
	f.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return true
	}
	for _, l := range lines {
		name, hash, found := strings.Cut(l, ":")
		if !found || name != user {
			continue
		}
		if bcrypt.CompareHashAndPassword([]byte(hash), []byte(pass)) != nil {
			return false
		}
		f.mu.Lock()
		f.verified[user] = sum
		f.mu.Unlock()
		return true
	}
	return false
}

func (f *credentialFile) checkToken(token string) bool {
	lines, err := f.load()
	if err != nil || token == "" {
		return false
	}
	ok := 0
	for _, l := range lines {
		ok |= subtle.ConstantTimeCompare([]byte(l), []byte(token))
	}
	return ok == 1
}
