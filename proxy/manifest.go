package proxy

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/internal/oci"
	"github.com/pullbroker/pullbroker/upstream"
)

// upstreamWorkTimeout bounds work a request starts on behalf of every
// client that joins it, since it no longer ends with the first client.
const upstreamWorkTimeout = 2 * time.Minute

// Cache outcomes, as logged and counted.
const (
	outcomeHit         = "hit"
	outcomeMiss        = "miss"
	outcomeStale       = "stale"
	outcomeRevalidated = "revalidated"
	outcomePinned      = "pinned"
)

type manifestResult struct {
	manifest cache.Manifest
	outcome  string
}

func (h *Handler) serveManifest(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	accept := acceptedTypes(r)
	var (
		res    manifestResult
		apiErr *apiError
	)
	if rt.isDigest() {
		res, apiErr = h.manifestByDigest(r.Context(), rt, accept)
	} else {
		res, apiErr = h.manifestByTag(r.Context(), rt, accept)
	}
	if apiErr != nil {
		writeError(w, r, apiErr)
		return
	}
	kind := "manifest"
	if !rt.isDigest() {
		kind = "tag"
	}
	h.cacheResult(info, kind, rt.registry, res.outcome)
	if res.outcome == outcomeStale {
		w.Header().Set("Warning", `110 pullbroker "Response is Stale: upstream `+rt.registry+` is unavailable"`)
	}
	m := res.manifest
	w.Header().Set("Content-Type", manifestMediaType(m))
	w.Header().Set("Docker-Content-Digest", m.Digest.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(m.Body)))
	w.Header().Set("Etag", `"`+m.Digest.String()+`"`)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Body)
	}
}

func (h *Handler) manifestByDigest(ctx context.Context, rt *route, accept []string) (manifestResult, *apiError) {
	dgst := digest.Digest(rt.reference)
	m, err := h.store.GetManifest(ctx, rt.registry, rt.repository, dgst)
	if err == nil {
		return manifestResult{m, outcomeHit}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return manifestResult{}, internalError(err)
	}
	if h.offline(rt) {
		return manifestResult{}, fromUpstream(rt, upstream.ErrOffline)
	}
	key := "digest\x00" + rt.registry + "\x00" + rt.repository + "\x00" + rt.reference
	res, err := h.shared(ctx, key, func(ctx context.Context) (manifestResult, error) {
		m, err := h.fetchManifest(ctx, rt, dgst, accept)
		return manifestResult{m, outcomeMiss}, err
	})
	if err != nil {
		return manifestResult{}, fromUpstream(rt, err)
	}
	return res, nil
}

func (h *Handler) manifestByTag(ctx context.Context, rt *route, accept []string) (manifestResult, *apiError) {
	rule, ruleIndex := h.pins.match(rt.registry, rt.repository, rt.reference)
	if res, ok, apiErr := h.pinnedManifest(ctx, rt, rule, ruleIndex); ok || apiErr != nil {
		return res, apiErr
	}
	ttl := rt.upstream.TagTTL
	if rule.Policy == PolicyTTL && rule.TTL > 0 {
		ttl = rule.TTL
	}

	tag, tagErr := h.store.GetTag(ctx, rt.registry, rt.repository, rt.reference)
	haveTag := tagErr == nil
	if tagErr != nil && !errors.Is(tagErr, cache.ErrNotFound) {
		h.log.Warn("unreadable tag record; asking the upstream", "registry", rt.registry, "repository", rt.repository, "tag", rt.reference, "error", tagErr)
	}
	offline := h.offline(rt)
	if haveTag && (offline || (tag.Fresh(ttl, h.now()) && acceptable(tag.MediaType, accept))) {
		if m, err := h.store.GetManifest(ctx, rt.registry, rt.repository, tag.Digest); err == nil {
			return manifestResult{m, outcomeHit}, nil
		}
		haveTag = false
	}
	if offline {
		return manifestResult{}, fromUpstream(rt, upstream.ErrOffline)
	}

	key := "tag\x00" + rt.registry + "\x00" + rt.repository + "\x00" + rt.reference + "\x00" + strings.Join(accept, ",")
	res, err := h.shared(ctx, key, func(ctx context.Context) (manifestResult, error) {
		res, err := h.resolveTag(ctx, rt, accept)
		if err == nil && rule.Policy == PolicySticky {
			h.stick(ctx, rt, res.manifest)
		}
		return res, err
	})
	if err == nil {
		return res, nil
	}
	if haveTag && upstream.IsUnavailable(err) {
		if m, cerr := h.store.GetManifest(ctx, rt.registry, rt.repository, tag.Digest); cerr == nil {
			h.log.Warn("serving a stale tag: upstream unavailable", "registry", rt.registry, "repository", rt.repository, "tag", rt.reference, "error", err)
			return manifestResult{m, outcomeStale}, nil
		}
	}
	return manifestResult{}, fromUpstream(rt, err)
}

// resolveTag asks the upstream what the tag points at with a HEAD (which
// Docker Hub does not count as a pull) and GETs the manifest only when
// the cache does not hold that digest yet.
func (h *Handler) resolveTag(ctx context.Context, rt *route, accept []string) (manifestResult, error) {
	head, err := h.client(rt).HeadManifest(ctx, rt.repository, rt.reference, accept)
	if err != nil {
		return manifestResult{}, err
	}
	outcome := outcomeRevalidated
	m, err := h.store.GetManifest(ctx, rt.registry, rt.repository, head.Digest)
	if errors.Is(err, cache.ErrNotFound) {
		outcome = outcomeMiss
		m, err = h.fetchManifest(ctx, rt, head.Digest, accept)
	}
	if err != nil {
		return manifestResult{}, err
	}
	err = h.store.PutTag(ctx, rt.registry, rt.repository, rt.reference, cache.Tag{
		Digest:      m.Digest,
		MediaType:   m.MediaType,
		Size:        int64(len(m.Body)),
		ConfirmedAt: h.now().UTC(),
	})
	if err != nil {
		h.log.Error("could not record tag; it will be revalidated next time", "registry", rt.registry, "repository", rt.repository, "tag", rt.reference, "error", err)
	}
	return manifestResult{m, outcome}, nil
}

// fetchManifest GETs a manifest by digest and stores it; the upstream
// client and the cache both verify the bytes against the digest.
func (h *Handler) fetchManifest(ctx context.Context, rt *route, dgst digest.Digest, accept []string) (cache.Manifest, error) {
	um, err := h.client(rt).GetManifest(ctx, rt.repository, dgst.String(), withDefaultTypes(accept))
	if err != nil {
		return cache.Manifest{}, err
	}
	m := cache.Manifest{Digest: um.Digest, MediaType: um.MediaType, Body: um.Body}
	if err := h.store.PutManifest(ctx, rt.registry, rt.repository, m); err != nil {
		return cache.Manifest{}, err
	}
	return m, nil
}

// shared runs fn once for all concurrent callers with the same key, on a
// context that outlives any one of them; each caller still stops waiting
// when its own request ends.
func (h *Handler) shared(ctx context.Context, key string, fn func(context.Context) (manifestResult, error)) (manifestResult, error) {
	ch := h.manifestFlight.DoChan(key, func() (any, error) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), upstreamWorkTimeout)
		defer cancel()
		return fn(wctx)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return manifestResult{}, res.Err
		}
		return res.Val.(manifestResult), nil
	case <-ctx.Done():
		return manifestResult{}, ctx.Err()
	}
}

// acceptedTypes lists the media types of the client's Accept headers,
// without parameters; empty means anything.
func acceptedTypes(r *http.Request) []string {
	var out []string
	for _, line := range r.Header.Values("Accept") {
		for _, part := range strings.Split(line, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt == "" {
				continue
			}
			if !slices.Contains(out, mt) {
				out = append(out, mt)
			}
		}
	}
	slices.Sort(out)
	return out
}

func acceptable(mediaType string, accept []string) bool {
	return len(accept) == 0 || slices.Contains(accept, "*/*") || slices.Contains(accept, mediaType)
}

// withDefaultTypes widens a by-digest request: the digest names exactly
// one manifest, whatever the client said it accepts.
func withDefaultTypes(accept []string) []string {
	out := oci.ManifestMediaTypes()
	for _, a := range accept {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// manifestMediaType is the type the upstream sent, or the one the body
// declares when the upstream sent none.
func manifestMediaType(m cache.Manifest) string {
	if m.MediaType != "" {
		return m.MediaType
	}
	if mt := oci.DeclaredMediaType(m.Body); mt != "" {
		return mt
	}
	return "application/vnd.oci.image.manifest.v1+json"
}
