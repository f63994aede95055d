package peers

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/tags"
	"github.com/pullbroker/pullbroker/upstream"
)

// Local is what this replica serves its peers from.
type Local struct {
	Store *cache.Store
	// Upstreams holds one client per configured upstream, by name.
	Upstreams map[string]*upstream.Client
	Tags      *tags.Resolver
}

// Handler serves the peer listener: a blob by digest (from the cache, or
// following the one fill of it, which this replica starts as its owner),
// the end of that fill, and what an image reference means. Nothing else: it is not a registry,
// and a request without the peer token is refused.
func (c *Cluster) Handler(local Local) http.Handler {
	s := &server{c: c, local: local}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ProtocolPrefix+"blobs/{digest}", s.blob)
	mux.HandleFunc("GET "+ProtocolPrefix+"fills/{digest}", s.fillEnded)
	mux.HandleFunc("GET "+ProtocolPrefix+"manifests", s.manifest)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pullbroker-peers"`)
			http.Error(w, "a valid peer token is required", http.StatusUnauthorized)
			return
		}
		if !strings.HasPrefix(r.URL.Path, ProtocolPrefix) {
			// Another protocol version: the asking replica fetches for
			// itself, as from an unreachable owner.
			w.Header().Set("Pullbroker-Peer-Protocol", strings.Trim(ProtocolPrefix, "/"))
			http.Error(w, "this replica speaks "+ProtocolPrefix+" only", http.StatusNotFound)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

type server struct {
	c     *Cluster
	local Local
}

func (s *server) authorized(r *http.Request) bool {
	if s.c.serverTLS != nil && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		// Served without the listener's TLS: it cannot be a peer.
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.c.token.Get())) == 1
}

// blob serves a blob this replica owns. A fill it starts is its own (a
// fetch from the upstream, never from another peer), so replicas that
// disagree for a moment on the owner cannot send a request in circles.
func (s *server) blob(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	dgst := digest.Digest(r.PathValue("digest"))
	if err := dgst.Validate(); err != nil {
		http.Error(w, "invalid digest", http.StatusBadRequest)
		return
	}
	size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
	if err != nil {
		size = -1
	}
	registry, repo := r.URL.Query().Get("registry"), r.URL.Query().Get("repository")
	// The peer asks because the blob was not in storage a moment ago: a
	// fill is looked for first, and FillAbsent looks at storage only when
	// a fill here committed the blob lately, so a cold blob's fetch
	// starts at once.
	fill := s.local.Store.RunningFill(dgst)
	if fill == nil {
		client := s.local.Upstreams[registry]
		if client == nil || client.Offline() {
			s.serveCached(w, r, dgst, size)
			return
		}
		var cached bool
		fill, cached, err = s.local.Store.FillAbsent(dgst, size, func(ctx context.Context) (io.ReadCloser, int64, error) {
			return client.GetBlob(ctx, repo, dgst)
		})
		switch {
		case err != nil:
			s.fail(w, http.StatusServiceUnavailable, "fill", dgst, err)
			return
		case cached:
			s.serveCached(w, r, dgst, size)
			return
		}
	}
	announced, err := fill.Wait(ctx)
	if err != nil {
		s.fail(w, http.StatusBadGateway, "fill", dgst, err)
		return
	}
	body, err := fill.NewReader(ctx)
	if err != nil {
		s.fail(w, http.StatusBadGateway, "fill", dgst, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if announced >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(announced, 10))
	}
	w.WriteHeader(http.StatusOK)
	if n, err := io.Copy(w, body); err != nil {
		// The fill failed or the peer left: cut the connection, so the
		// peer cannot take a short body for the whole blob.
		s.c.log.Warn("aborting a blob sent to a peer", "digest", dgst, "sent", n, "error", err)
		panic(http.ErrAbortHandler)
	}
}

// fillEnded answers once this replica runs no fill of a blob, for a peer
// that streamed the blob from here: the peer then finds this replica's
// commit in storage, and writes the blob only if it is not there. The
// status goes out at once, so that the peer tells a replica that is still
// writing the blob (which takes as long as the blob is large) from one
// that hangs.
func (s *server) fillEnded(w http.ResponseWriter, r *http.Request) {
	dgst := digest.Digest(r.PathValue("digest"))
	if err := dgst.Validate(); err != nil {
		http.Error(w, "invalid digest", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
	if fill := s.local.Store.RunningFill(dgst); fill != nil {
		// Its outcome is in storage, where the peer looks.
		if err := fill.Done(r.Context()); err != nil && r.Context().Err() != nil {
			return
		}
	}
	_ = json.NewEncoder(w).Encode(fillAnswer{Ended: true})
}

// serveCached serves a committed blob, or refuses when storage does not
// hold it: there is no upstream to fetch it from.
func (s *server) serveCached(w http.ResponseWriter, r *http.Request, dgst digest.Digest, size int64) {
	blob, err := s.local.Store.OpenBlob(r.Context(), dgst, size)
	switch {
	case errors.Is(err, cache.ErrNotFound):
		s.fail(w, http.StatusServiceUnavailable, "upstream", dgst, errors.New("not cached, and no upstream to fetch it from"))
		return
	case err != nil:
		s.fail(w, http.StatusInternalServerError, "cache", dgst, err)
		return
	}
	defer blob.Content.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", blob.ModTime, blob.Content)
}

func (s *server) fail(w http.ResponseWriter, status int, stage string, dgst digest.Digest, err error) {
	s.c.log.Warn("could not serve a blob to a peer", "stage", stage, "digest", dgst, "error", err)
	http.Error(w, http.StatusText(status), status)
}

// manifest resolves an image reference as its owner and answers the
// digest of the manifest, which it has stored for the asking replica to
// read. The status goes out before the upstream is asked, so that the
// asking replica tells a replica that is working (however long its
// upstream takes) from one that hangs, within its first-byte bound; how
// the resolution ended is in the body.
func (s *server) manifest(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	img := tags.Image{Registry: q.Get("registry"), Repository: q.Get("repository"), Tag: q.Get("tag"), Digest: digest.Digest(q.Get("digest"))}
	if img.Registry == "" || img.Repository == "" || (img.Tag == "") == (img.Digest == "") {
		http.Error(w, "registry, repository and one of tag or digest are required", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
	ans, err := s.local.Tags.ManifestHere(r.Context(), img, q["accept"])
	if err != nil {
		s.c.log.LogAttrs(r.Context(), slog.LevelWarn, "could not resolve an image for a peer", slog.String("image", img.String()), slog.Any("error", err))
		_ = json.NewEncoder(w).Encode(manifestAnswer{Failed: true})
		return
	}
	_ = json.NewEncoder(w).Encode(manifestAnswer{Digest: ans.Manifest.Digest, Outcome: ans.Outcome})
}
