package upstream

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
)

// realmGuard refuses every Bearer challenge whose realm is on a host
// outside allowed, before ggcr reads it: the ping's challenge (from which
// ggcr takes the realm it sends credentials to, with a GCP jsonKey
// exchange the whole service-account key) and every later 401. A
// compromised or misconfigured upstream must not be able to name any host.
type realmGuard struct {
	allowed hostSet
	inner   http.RoundTripper
}

func (g *realmGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.inner.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	for _, realm := range bearerRealms(resp.Header) {
		u, err := url.Parse(realm)
		if err == nil && u.Host != "" && g.allowed.contains(u.Hostname()) {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s challenged with token realm %q, which is not among the allowed realm hosts (%s); no credentials were sent. If the realm is right, add its host to the upstream's allowedRealmHosts",
			ErrRealmNotAllowed, redactURL(req.URL), redactRealm(realm), g.allowed)
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
