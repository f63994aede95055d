package upstream

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// realmPolicy decides which hosts may serve the token realm of an
// upstream's Bearer challenge. ggcr sends the upstream's credentials to the
// realm (with a GCP jsonKey exchange, the whole service-account key), so a
// compromised or misconfigured upstream must not be able to name any host.
type realmPolicy struct {
	registry string   // the registry's own host name: always allowed
	hosts    []string // allowed host names
	domains  []string // every subdomain allowed
	// describe is what error messages list as allowed.
	describe string
}

// newRealmPolicy builds the policy of a registry at registryHost (host or
// host:port). configured is the upstream's allowedRealmHosts: host names,
// or "*.example.com" for every subdomain of example.com. Without it, the
// registry's registrable domain is allowed: registry-1.docker.io may send
// its clients to auth.docker.io, registry.example.com to
// auth.example.com, and an address or single-label host only to itself.
// Configuration validation checks the entries' syntax.
func newRealmPolicy(registryHost string, configured []string) *realmPolicy {
	host := strings.ToLower(hostOnly(registryHost))
	p := &realmPolicy{registry: host}
	if len(configured) == 0 {
		if domain, err := publicsuffix.EffectiveTLDPlusOne(host); err == nil && net.ParseIP(host) == nil {
			p.hosts, p.domains = []string{domain}, []string{domain}
			p.describe = domain + " and its subdomains (the registry's domain)"
		} else {
			p.describe = host + " (the registry itself)"
		}
		return p
	}
	for _, h := range configured {
		h = strings.ToLower(h)
		if d, ok := strings.CutPrefix(h, "*."); ok {
			p.domains = append(p.domains, d)
		} else {
			p.hosts = append(p.hosts, h)
		}
	}
	p.describe = host + ", " + strings.Join(configured, ", ")
	return p
}

func (p *realmPolicy) allows(host string) bool {
	host = strings.ToLower(host)
	if host == p.registry || slices.Contains(p.hosts, host) {
		return true
	}
	for _, d := range p.domains {
		if strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

// realmGuard refuses every Bearer challenge whose realm is on a host the
// policy does not allow, before ggcr reads it: the ping's challenge (from
// which ggcr takes the realm it sends credentials to) and every later 401.
type realmGuard struct {
	policy *realmPolicy
	inner  http.RoundTripper
}

func (g *realmGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.inner.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	for _, realm := range bearerRealms(resp.Header) {
		u, err := url.Parse(realm)
		if err == nil && u.Host != "" && g.policy.allows(u.Hostname()) {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s challenged with token realm %q, which is not among the allowed realm hosts (%s); no credentials were sent. If the realm is right, add its host to the upstream's allowedRealmHosts",
			ErrRealmNotAllowed, redactURL(req.URL), redactRealm(realm), g.policy.describe)
	}
	return resp, nil
}

// bearerRealm matches the realm parameter of a Bearer challenge.
var bearerRealm = regexp.MustCompile(`(?i)\bbearer\s.*?\brealm\s*=\s*"([^"]+)"`)

// bearerRealms lists the realms of the Bearer challenges in h.
func bearerRealms(h http.Header) []string {
	var realms []string
	for _, c := range h.Values("Www-Authenticate") {
		if m := bearerRealm.FindStringSubmatch(c); m != nil {
			realms = append(realms, m[1])
		}
	}
	return realms
}

// redactRealm shows a realm without its query or user part.
func redactRealm(realm string) string {
	u, err := url.Parse(realm)
	if err != nil {
		return "(unparsable)"
	}
	return redactURL(u)
}

// hostOnly strips the port of host:port.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
