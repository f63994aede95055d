package upstream

import (
	"net"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// hostSet matches host names against patterns: a host name, or
// "*.example.com" for every subdomain of example.com.
type hostSet []string

func (s hostSet) contains(host string) bool {
	host = strings.ToLower(host)
	for _, p := range s {
		if d, ok := strings.CutPrefix(p, "*."); ok {
			if strings.HasSuffix(host, "."+d) {
				return true
			}
		} else if host == p {
			return true
		}
	}
	return false
}

func (s hostSet) String() string { return strings.Join(s, ", ") }

// partnerHosts are the hosts a public registry is known to send its clients
// to for the registry API itself, not only for blobs: their redirects of
// manifest, tag and referrers requests are followed, and their token
// realms allowed. registry.k8s.io redirects every API request but blob
// fetches to a regional Artifact Registry ("us-west1-docker.pkg.dev"),
// whose challenge names a realm on that host.
var partnerHosts = map[string]hostSet{
	"registry.k8s.io": {"*.pkg.dev"},
}

// defaultRealmHosts are the realm hosts allowed for a registry whose
// upstream sets no allowedRealmHosts: its own registrable domain
// (registry-1.docker.io may send its clients to auth.docker.io,
// registry.example.com to auth.example.com; an address or single-label
// host only to itself) and its partner hosts.
func defaultRealmHosts(registryHost string) hostSet {
	host := strings.ToLower(hostOnly(registryHost))
	set := hostSet{host}
	if domain, err := publicsuffix.EffectiveTLDPlusOne(host); err == nil && net.ParseIP(host) == nil {
		set = append(set, domain, "*."+domain)
	}
	return append(set, partnerHosts[host]...)
}

// realmHosts is the set of hosts whose token realm may receive an
// upstream's credentials: the registry's own host, and the configured
// allowedRealmHosts or else defaultRealmHosts.
func realmHosts(registryHost string, configured []string) hostSet {
	if len(configured) == 0 {
		return defaultRealmHosts(registryHost)
	}
	set := hostSet{strings.ToLower(hostOnly(registryHost))}
	for _, h := range configured {
		if h = strings.ToLower(h); !slices.Contains(set, h) {
			set = append(set, h)
		}
	}
	return set
}

// hostOnly strips the port of host:port.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
