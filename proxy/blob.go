package proxy

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

func (h *Handler) serveBlob(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	ctx := r.Context()
	dgst := digest.Digest(rt.reference)
	size, apiErr := h.confirmBlobInRepository(ctx, rt, dgst)
	if apiErr != nil {
		writeError(w, r, apiErr)
		return
	}

	blob, err := h.store.OpenBlob(ctx, dgst, size)
	if err == nil {
		h.cacheResult(info, "blob", rt.registry, tags.Hit)
		defer blob.Close()
		if h.cfg.Storage.Redirect && r.Method == http.MethodGet && h.redirectToStorage(w, r, dgst) {
			return
		}
		h.serveCachedBlob(w, r, dgst, blob)
		return
	}
	if !errors.Is(err, cache.ErrNotFound) {
		writeError(w, r, internalError(err))
		return
	}
	if h.offline(rt) {
		if fill := h.store.RunningFill(dgst); fill != nil && r.Method == http.MethodGet {
			h.followFill(w, r, rt, dgst, size, fill, nil)
			return
		}
		writeError(w, r, fromUpstream(rt, upstream.ErrOffline))
		return
	}
	h.cacheResult(info, "blob", rt.registry, tags.Miss)

	if r.Method == http.MethodHead {
		size, err := h.client(rt).HeadBlob(ctx, rt.repository, dgst)
		if err != nil {
			writeError(w, r, fromUpstream(rt, err))
			return
		}
		setBlobHeaders(w, dgst, size)
		w.WriteHeader(http.StatusOK)
		return
	}
	h.serveThroughFill(w, r, rt, dgst, size)
}

// confirmBlobInRepository enforces that a blob cached for one repository
// is served for another only once that one is known to hold it: linked by
// a manifest fetched for it, or confirmed by the upstream now. It returns
// the blob's size as the link or the upstream gave it (-1 unknown).
func (h *Handler) confirmBlobInRepository(ctx context.Context, rt *route, dgst digest.Digest) (int64, *apiError) {
	link, err := h.store.GetLink(ctx, rt.registry, rt.repository, dgst)
	if err == nil {
		return link.Size, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return 0, internalError(err)
	}
	if h.offline(rt) {
		return 0, fromUpstream(rt, upstream.ErrOffline)
	}
	// Concurrent requests for the same unlinked blob share one HEAD.
	key := rt.registry + "\x00" + rt.repository + "\x00" + dgst.String()
	size, err := h.blobConfirmFlight.Do(ctx, key, cmp.Or(rt.upstream.WorkTimeout, config.DefaultWorkTimeout), func(ctx context.Context) (int64, error) {
		size, err := h.client(rt).HeadBlob(ctx, rt.repository, dgst)
		if err != nil {
			return 0, err
		}
		if err := h.store.LinkBlob(ctx, rt.registry, rt.repository, dgst, size); err != nil {
			if !errors.Is(err, cache.ErrNotStored) {
				return 0, err
			}
			// The upstream confirmed it: serve now, confirm again next time.
			h.log.Warn("could not record that a repository holds a blob", "registry", rt.registry, "repository", rt.repository, "digest", dgst, "error", err)
		}
		return size, nil
	})
	if err != nil {
		return 0, fromUpstream(rt, err)
	}
	return size, nil
}

func (h *Handler) serveCachedBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, blob *cache.Blob) {
	counted := &servedBytesCounter{ResponseWriter: w, counter: h.metrics.servedBytes.WithLabelValues("cache")}
	if r.Method != http.MethodGet || hasRangeOrCondition(r) {
		setBlobHeaders(w, dgst, -1)
		// ServeContent answers Range with 206 and Content-Range, and the
		// conditional headers.
		http.ServeContent(counted, r, "", blob.ModTime, blob.Content)
		return
	}
	// The whole blob: Blob.WriteTo copies a file with sendfile, and an
	// object from storage without the driver's small copies.
	setBlobHeaders(w, dgst, blob.Size)
	if !blob.ModTime.IsZero() {
		w.Header().Set("Last-Modified", blob.ModTime.UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(http.StatusOK)
	if n, err := blob.WriteTo(counted); err != nil {
		// Fewer bytes than Content-Length: the cut connection tells the
		// client the blob is incomplete.
		if r.Context().Err() == nil {
			h.log.Warn("aborting cached blob response", "digest", dgst, "sent", n, "error", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// hasRangeOrCondition reports whether r asks for part of a blob, or for it
// only under a condition: what http.ServeContent answers.
func hasRangeOrCondition(r *http.Request) bool {
	for _, h := range []string{"Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"} {
		if r.Header.Get(h) != "" {
			return true
		}
	}
	return false
}

// redirectToStorage answers with a redirect to the signed URL of a cached
// blob, and reports whether it did; without a URL the blob is served here.
func (h *Handler) redirectToStorage(w http.ResponseWriter, r *http.Request, dgst digest.Digest) bool {
	url, err := h.store.BlobURL(r, dgst)
	if err != nil {
		h.log.Warn("storage gave no URL to redirect a blob GET to; serving it directly", "digest", dgst, "error", err)
		return false
	}
	if url == "" {
		return false
	}
	w.Header().Set("Docker-Content-Digest", dgst.String())
	http.Redirect(w, r, url, http.StatusTemporaryRedirect)
	return true
}

// serveThroughFill joins (or starts) the one fill of a blob that storage
// did not hold a moment ago and streams it as it arrives; with peers, the
// fill streams from the blob's owner among the replicas unless this
// replica owns it. size is the descriptor's (-1 unknown).
func (h *Handler) serveThroughFill(w http.ResponseWriter, r *http.Request, rt *route, dgst digest.Digest, size int64) {
	client := h.client(rt)
	repo := rt.repository
	var fetch cache.Fetcher = func(ctx context.Context) (io.ReadCloser, int64, error) {
		return client.GetBlob(ctx, repo, dgst)
	}
	if h.peers != nil {
		// The blob's owner among the replicas fetches it once for all.
		fetch = h.peers.BlobFetcher(rt.registry, repo, dgst, size, fetch)
	}
	fill, cached, err := h.store.FillAbsent(dgst, size, fetch)
	switch {
	case errors.Is(err, cache.ErrNotStored):
		h.streamUncached(w, r, rt, dgst, size, fetch, err)
	case err != nil:
		writeError(w, r, fillError(rt, err))
	case cached:
		h.serveFromCache(w, r, dgst, size)
	default:
		h.followFill(w, r, rt, dgst, size, fill, fetch)
	}
}

// followFill streams a fill to the client as its bytes arrive. fetch,
// when not nil, passes the blob through uncached should the fill find
// that storage cannot take it before it handed out any byte.
func (h *Handler) followFill(w http.ResponseWriter, r *http.Request, rt *route, dgst digest.Digest, size int64, fill *cache.Fill, fetch cache.Fetcher) {
	ctx := r.Context()
	announced, err := fill.Wait(ctx)
	if err != nil {
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, cache.ErrNotStored) && fetch != nil:
			h.streamUncached(w, r, rt, dgst, size, fetch, err)
		default:
			writeError(w, r, fillError(rt, err))
		}
		return
	}
	if r.Header.Get("Range") != "" {
		// A range of a blob still arriving is answered once it is whole
		// and verified, from the cache.
		if err := fill.Done(ctx); err != nil {
			switch {
			case ctx.Err() != nil:
			case errors.Is(err, cache.ErrNotStored) && fetch != nil:
				h.streamUncached(w, r, rt, dgst, size, fetch, err)
			default:
				writeError(w, r, fillError(rt, err))
			}
			return
		}
		h.serveFromCache(w, r, dgst, size)
		return
	}
	body, err := fill.NewReader(ctx)
	if err != nil {
		writeError(w, r, fillError(rt, err))
		return
	}
	defer body.Close()
	h.copyBlob(w, dgst, announced, body)
}

// streamUncached passes a blob that storage cannot take straight from the
// upstream, verified as a fill verifies it. A Range is answered with the
// whole blob (200), which HTTP allows.
func (h *Handler) streamUncached(w http.ResponseWriter, r *http.Request, rt *route, dgst digest.Digest, size int64, fetch cache.Fetcher, why error) {
	h.log.Warn("streaming a blob uncached: storage cannot take it", "digest", dgst, "reason", why)
	body, n, err := h.store.Stream(r.Context(), dgst, size, fetch)
	if err != nil {
		if r.Context().Err() == nil {
			writeError(w, r, fillError(rt, err))
		}
		return
	}
	defer body.Close()
	h.copyBlob(w, dgst, n, body)
}

// copyBlob answers 200 with a blob that is still arriving. The body
// withholds its last byte until the digest is verified and fails instead
// when it is not: then the connection is cut, so the client cannot take
// what it got for the whole blob.
func (h *Handler) copyBlob(w http.ResponseWriter, dgst digest.Digest, size int64, body io.Reader) {
	setBlobHeaders(w, dgst, size)
	w.WriteHeader(http.StatusOK)
	n, err := io.Copy(w, body)
	h.metrics.servedBytes.WithLabelValues("upstream").Add(float64(n))
	if err != nil {
		h.log.Warn("aborting blob response", "digest", dgst, "sent", n, "error", err)
		panic(http.ErrAbortHandler)
	}
}

// fillError answers a fill that could not start or failed before any
// byte went out: too many fills is 503 with Retry-After, the rest is the
// upstream's failure.
func fillError(rt *route, err error) *apiError {
	if errors.Is(err, cache.ErrTooManyFills) {
		e := newAPIError(http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable,
			"too many blobs are being fetched from upstreams right now and %s is not cached; retry shortly", rt.describe())
		e.retryAfter = fillRetryAfter
		return e
	}
	return fromUpstream(rt, err)
}

// fillRetryAfter is what a client refused for too many fills is told to
// wait: about as long as a small layer takes.
const fillRetryAfter = 5 * time.Second

func (h *Handler) serveFromCache(w http.ResponseWriter, r *http.Request, dgst digest.Digest, size int64) {
	blob, err := h.store.OpenBlob(r.Context(), dgst, size)
	if err != nil {
		writeError(w, r, internalError(err))
		return
	}
	defer blob.Close()
	h.serveCachedBlob(w, r, dgst, blob)
}

func setBlobHeaders(w http.ResponseWriter, dgst digest.Digest, size int64) {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", dgst.String())
	w.Header().Set("Etag", `"`+dgst.String()+`"`)
	w.Header().Set("Accept-Ranges", "bytes")
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
}

// servedBytesCounter counts body bytes while keeping the ReaderFrom
// (sendfile) path of the writer beneath it.
type servedBytesCounter struct {
	http.ResponseWriter
	counter interface{ Add(float64) }
}

func (c *servedBytesCounter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.counter.Add(float64(n))
	return n, err
}

func (c *servedBytesCounter) ReadFrom(src io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, src)
	c.counter.Add(float64(n))
	return n, err
}
