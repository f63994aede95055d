// Package tags decides which manifest a reference means now. It owns the
// pull policy for tags: pins and pin rules (ttl, sticky, locked), the tag
// TTL and its revalidation with one upstream HEAD, serving stale when the
// upstream is unavailable, and offline mode. The registry API, the admin
// API, sync and import all reach tags through a Resolver, so a rule is
// written once and every path obeys it.
//
// It also owns the vocabulary those callers share: Image, the reference
// resolved against the configured upstreams, and Pin, the pin as the admin
// API and its clients exchange it.
package tags
