package proxy

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

func (h *Handler) serveBlob(w http.ResponseWriter, r *http.Request, rt *route, info *requestInfo) {
	ctx := r.Context()
	dgst := digest.Digest(rt.reference)
	if apiErr := h.confirmBlobInRepository(ctx, rt, dgst); apiErr != nil {
		writeError(w, r, apiErr)
		return
	}

	blob, err := h.store.OpenBlob(ctx, dgst)
	if err == nil {
		h.cacheResult(info, "blob", rt.registry, tags.Hit)
		defer blob.Content.Close()
		h.serveCachedBlob(w, r, dgst, blob)
		return
	}
	if !errors.Is(err, cache.ErrNotFound) {
		writeError(w, r, internalError(err))
		return
	}
	if h.offline(rt) {
		if fill := h.store.RunningFill(dgst); fill != nil && r.Method == http.MethodGet {
			h.followFill(w, r, rt, dgst, fill)
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
	h.serveThroughFill(w, r, rt, dgst)
}

// confirmBlobInRepository enforces that a blob cached for one repository
// is served for another only once that one is known to hold it: linked by
// a manifest fetched for it, or confirmed by the upstream now.
func (h *Handler) confirmBlobInRepository(ctx context.Context, rt *route, dgst digest.Digest) *apiError {
	_, err := h.store.GetLink(ctx, rt.registry, rt.repository, dgst)
	if err == nil {
		return nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return internalError(err)
	}
	if h.offline(rt) {
		return fromUpstream(rt, upstream.ErrOffline)
	}
	// Concurrent requests for the same unlinked blob share one HEAD.
	key := rt.registry + "\x00" + rt.repository + "\x00" + dgst.String()
	_, err = h.blobConfirmFlight.Do(ctx, key, cmp.Or(rt.upstream.WorkTimeout, config.DefaultWorkTimeout), func(ctx context.Context) (struct{}, error) {
		if _, err := h.client(rt).HeadBlob(ctx, rt.repository, dgst); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, h.store.LinkBlob(ctx, rt.registry, rt.repository, dgst)
	})
	if err != nil {
		return fromUpstream(rt, err)
	}
	return nil
}

func (h *Handler) serveCachedBlob(w http.ResponseWriter, r *http.Request, dgst digest.Digest, blob *cache.Blob) {
	setBlobHeaders(w, dgst, -1)
	// ServeContent answers Range with 206 and Content-Range, and copies an
	// *os.File with sendfile.
	http.ServeContent(&servedBytesCounter{ResponseWriter: w, counter: h.metrics.servedBytes.WithLabelValues("cache")},
		r, "", blob.ModTime, blob.Content)
}

// serveThroughFill joins (or starts) the one upstream fetch of the blob
// and streams it as it arrives.
func (h *Handler) serveThroughFill(w http.ResponseWriter, r *http.Request, rt *route, dgst digest.Digest) {
	client := h.client(rt)
	repo := rt.repository
	fill, cached, err := h.store.Fill(dgst, func(ctx context.Context) (io.ReadCloser, int64, error) {
		return client.GetBlob(ctx, repo, dgst)
	})
	if err != nil {
		writeError(w, r, internalError(err))
		return
	}
	if cached {
		h.serveFromCache(w, r, dgst)
		return
	}
	h.followFill(w, r, rt, dgst, fill)
}

// followFill streams a fill to the client as its bytes arrive.
func (h *Handler) followFill(w http.ResponseWriter, r *http.Request, rt *route, dgst digest.Digest, fill *cache.Fill) {
	ctx := r.Context()
	size, err := fill.Wait(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		writeError(w, r, fromUpstream(rt, err))
		return
	}
	if r.Header.Get("Range") != "" {
		// A range of a blob still arriving is answered once it is whole
		// and verified, from the cache.
		if err := fill.Done(ctx); err != nil {
			if ctx.Err() == nil {
				writeError(w, r, fromUpstream(rt, err))
			}
			return
		}
		h.serveFromCache(w, r, dgst)
		return
	}
	body, err := fill.NewReader(ctx)
	if err != nil {
		writeError(w, r, fromUpstream(rt, err))
		return
	}
	defer body.Close()
	setBlobHeaders(w, dgst, size)
	w.WriteHeader(http.StatusOK)
	n, err := io.Copy(w, body)
	h.metrics.servedBytes.WithLabelValues("upstream").Add(float64(n))
	if err != nil {
		// Cut the connection so the client cannot take what it got for
		// the whole blob.
		h.log.Warn("aborting blob response", "digest", dgst, "sent", n, "error", err)
		panic(http.ErrAbortHandler)
	}
}

func (h *Handler) serveFromCache(w http.ResponseWriter, r *http.Request, dgst digest.Digest) {
	blob, err := h.store.OpenBlob(r.Context(), dgst)
	if err != nil {
		writeError(w, r, internalError(err))
		return
	}
	defer blob.Content.Close()
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
