package proxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"golang.org/x/crypto/bcrypt"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/filewatch"
	"github.com/pullbroker/pullbroker/internal/glob"
)

// access decides who may pull what. The proxy holds upstream credentials,
// so anyone who reaches it could read private images: operators limit the
// source networks, may require client credentials, and list the
// repositories each upstream may serve.
type access struct {
	networks     []netip.Prefix
	htpasswd     *filewatch.Value[*htpasswdUsers] // nil: not configured
	tokens       *filewatch.Value[[]string]       // nil: not configured
	repositories map[string][]glob.Pattern        // by upstream name; absent = all
	logins       *loginLimiter
	metrics      *metrics
	// compareHash is bcrypt.CompareHashAndPassword; tests see through it
	// which hash a login was checked against.
	compareHash func(hash, password []byte) error
}

func newAccess(cfg *config.Config, log *slog.Logger, m *metrics) (*access, error) {
	a := &access{
		repositories: map[string][]glob.Pattern{},
		logins:       newLoginLimiter(time.Now),
		metrics:      m,
		compareHash:  bcrypt.CompareHashAndPassword,
	}
	for i, cidr := range cfg.Access.AllowedNetworks {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("access.allowedNetworks[%d]: %w", i, err)
		}
		a.networks = append(a.networks, p.Masked())
	}
	var err error
	if f := cfg.Access.HtpasswdFile; f != "" {
		if a.htpasswd, err = filewatch.New(f, parseHtpasswd, keepLastGood[*htpasswdUsers](log, "access.htpasswdFile", f)); err != nil {
			return nil, fmt.Errorf("access.htpasswdFile: %w", err)
		}
	}
	if f := cfg.Access.TokensFile; f != "" {
		if a.tokens, err = filewatch.New(f, parseTokens, keepLastGood[[]string](log, "access.tokensFile", f)); err != nil {
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

// keepLastGood logs a client credential file that changed and does not
// load; the users or tokens loaded before stay in use.
func keepLastGood[T any](log *slog.Logger, key, path string) filewatch.Options[T] {
	return filewatch.Options[T]{
		OnReload: func(T) { log.Info("client credentials reloaded", "config", key, "file", path) },
		OnError: func(err error) {
			log.Warn("client credential file does not load; keeping the previous content", "config", key, "file", path, "err", err)
		},
	}
}

func (a *access) credentialsConfigured() bool { return a.htpasswd != nil || a.tokens != nil }

// checkClient admits a client from an allowed network, or one that
// presents valid client credentials. Only the connection's own address
// counts: forwarding headers are the client's to forge. A source whose
// logins failed too often is refused for a while before its credentials
// are even looked at (answered with Retry-After).
func (a *access) checkClient(w http.ResponseWriter, r *http.Request) *apiError {
	if a.inAllowedNetwork(r.RemoteAddr) {
		return nil
	}
	if !a.credentialsConfigured() {
		return newAPIError(http.StatusForbidden, errcode.ErrorCodeDenied,
			"pulls from %s are not allowed: the address is outside access.allowedNetworks", hostOf(r.RemoteAddr))
	}
	check, presented := a.presentedCredentials(r)
	if presented {
		src := loginSource(r.RemoteAddr)
		if wait, limited := a.logins.limited(src); limited {
			a.metrics.clientAuthFailures.WithLabelValues("throttled").Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			return newAPIError(http.StatusTooManyRequests, errcode.ErrorCodeTooManyRequests,
				"too many failed logins from this address; retry in %s", wait.Round(time.Second))
		}
		if check() {
			return nil
		}
		a.logins.failed(src)
		a.metrics.clientAuthFailures.WithLabelValues("invalid").Inc()
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="pullbroker"`)
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

// presentedCredentials returns the check of the credentials r carries, if
// it carries any of a configured kind.
func (a *access) presentedCredentials(r *http.Request) (check func() bool, presented bool) {
	if user, pass, ok := r.BasicAuth(); ok && a.htpasswd != nil {
		return func() bool { return a.htpasswd.Get().check(user, pass, a.compareHash) }, true
	}
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && a.tokens != nil {
		return func() bool { return validToken(a.tokens.Get(), token) }, true
	}
	return nil, false
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

// htpasswdUsers is a parsed htpasswd file: bcrypt hashes by user name.
type htpasswdUsers struct {
	hashes map[string][]byte
	// unknownUser is compared for a user the file does not name, at the
	// cost its hashes use, so that the answer takes as long as for a
	// known user with a wrong password and does not tell who exists.
	unknownUser []byte

	mu sync.Mutex
	// verified caches bcrypt successes: bcrypt costs tens of
	// milliseconds, and a pull makes dozens of requests.
	verified map[string][sha256.Size]byte
}

func parseHtpasswd(data []byte) (*htpasswdUsers, error) {
	u := &htpasswdUsers{hashes: map[string][]byte{}, verified: map[string][sha256.Size]byte{}}
	cost := 0
	for i, line := range contentLines(data) {
		name, hash, found := strings.Cut(line, ":")
		if !found || name == "" {
			return nil, fmt.Errorf("entry %d is not user:hash", i+1)
		}
		c, err := bcrypt.Cost([]byte(hash))
		if err != nil {
			return nil, fmt.Errorf("user %s: the hash is not bcrypt; make it with htpasswd -B", name)
		}
		cost = max(cost, c)
		u.hashes[name] = []byte(hash)
	}
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	password := make([]byte, 16)
	_, _ = rand.Read(password)
	hash, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		return nil, err
	}
	u.unknownUser = hash
	return u, nil
}

func (u *htpasswdUsers) check(user, pass string, compare func(hash, password []byte) error) bool {
	sum := sha256.Sum256([]byte(user + "\x00" + pass))
	u.mu.Lock()
	cached, ok := u.verified[user]
	u.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(cached[:], sum[:]) == 1 {
		return true
	}
	hash, known := u.hashes[user]
	if !known {
		hash = u.unknownUser
	}
	if compare(hash, []byte(pass)) != nil || !known {
		return false
	}
	u.mu.Lock()
	u.verified[user] = sum
	u.mu.Unlock()
	return true
}

func parseTokens(data []byte) ([]string, error) { return contentLines(data), nil }

func validToken(tokens []string, token string) bool {
	if token == "" {
		return false
	}
	ok := 0
	for _, t := range tokens {
		ok |= subtle.ConstantTimeCompare([]byte(t), []byte(token))
	}
	return ok == 1
}

// contentLines are the lines of a credential file that are not blank or
// comments, trimmed.
func contentLines(data []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// Failed logins are limited per source: after maxFailedLogins within
// failedLoginWindow, the source's logins are refused until the window
// ends. Real clients log in with stored credentials and fail only after a
// rotation; guessing passwords needs many more attempts than this allows.
const (
	maxFailedLogins   = 10
	failedLoginWindow = time.Minute
	// maxLoginSources bounds the memory an attacker with many addresses
	// can take; beyond it, sources whose window ended are forgotten.
	maxLoginSources = 10000
)

type loginLimiter struct {
	now func() time.Time

	mu      sync.Mutex
	sources map[netip.Prefix]*failedLogins
}

type failedLogins struct {
	since time.Time
	count int
}

func newLoginLimiter(now func() time.Time) *loginLimiter {
	return &loginLimiter{now: now, sources: map[netip.Prefix]*failedLogins{}}
}

// loginSource is the address a login is counted under: the host for IPv4,
// its /64 for IPv6 (one host's share of a network).
func loginSource(remoteAddr string) netip.Prefix {
	ip, err := netip.ParseAddr(hostOf(remoteAddr))
	if err != nil {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// limited reports whether src must wait, and how long.
func (l *loginLimiter) limited(src netip.Prefix) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.sources[src]
	if f == nil || f.count < maxFailedLogins {
		return 0, false
	}
	wait := f.since.Add(failedLoginWindow).Sub(l.now())
	if wait <= 0 {
		delete(l.sources, src)
		return 0, false
	}
	return wait, true
}

func (l *loginLimiter) failed(src netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.sources[src]
	if f == nil || now.Sub(f.since) >= failedLoginWindow {
		if f == nil && len(l.sources) >= maxLoginSources {
			l.forgetEnded(now)
		}
		f = &failedLogins{since: now}
		l.sources[src] = f
	}
	f.count++
}

func (l *loginLimiter) forgetEnded(now time.Time) {
	for src, f := range l.sources {
		if now.Sub(f.since) >= failedLoginWindow {
			delete(l.sources, src)
		}
	}
	if len(l.sources) >= maxLoginSources {
		// Every window still open: start over rather than grow.
		clear(l.sources)
	}
}
