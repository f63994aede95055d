package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/internal/filewatch"
)

// PinRefresh reports what a refresh found.
type PinRefresh struct {
	Image   string        `json:"image"`
	Old     digest.Digest `json:"old,omitempty"`
	New     digest.Digest `json:"new"`
	Changed bool          `json:"changed"`
}

// AdminHandler serves the pin API under /api/v1/, guarded by the bearer
// token in tokenFile (admin.tokenFile; empty disables the API). The file is
// watched (internal/filewatch), so a rotated token takes effect within a
// second; a file that cannot be read at start is an error.
func (h *Handler) AdminHandler(tokenFile string) (http.Handler, error) {
	var token *filewatch.Value[string]
	if tokenFile != "" {
		var err error
		token, err = filewatch.New(tokenFile, parseAdminToken, filewatch.Options[string]{
			OnError: func(err error) {
				h.log.Warn("admin token file does not load; keeping the previous token", "file", tokenFile, "err", err)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("admin.tokenFile: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/pins", h.adminListPins)
	mux.HandleFunc("GET /api/v1/pins/{image...}", h.adminShowPin)
	mux.HandleFunc("PUT /api/v1/pins/{image...}", h.adminSetPin)
	mux.HandleFunc("DELETE /api/v1/pins/{image...}", h.adminDeletePin)
	mux.HandleFunc("POST /api/v1/refresh/{image...}", h.adminRefreshPin)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkBearer(r, token); err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pullbroker-admin"`)
			adminError(w, http.StatusUnauthorized, err)
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

func parseAdminToken(b []byte) (string, error) {
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", errors.New("the admin token file is empty")
	}
	return token, nil
}

func checkBearer(r *http.Request, token *filewatch.Value[string]) error {
	if token == nil {
		return errors.New("the admin API is disabled: set admin.tokenFile")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token.Get())) != 1 {
		return errors.New("a valid bearer token is required")
	}
	return nil
}

func (h *Handler) adminListPins(w http.ResponseWriter, r *http.Request) {
	pins, err := h.store.Pins(r.Context())
	if err != nil {
		adminError(w, http.StatusInternalServerError, err)
		return
	}
	if pins == nil {
		pins = []cache.Pin{}
	}
	adminJSON(w, map[string]any{"pins": pins})
}

func (h *Handler) adminShowPin(w http.ResponseWriter, r *http.Request) {
	img, err := h.tagImage(r.PathValue("image"))
	if err != nil {
		adminError(w, http.StatusBadRequest, err)
		return
	}
	pin, err := h.store.GetPin(r.Context(), img.Registry, img.Repository, img.Tag)
	if errors.Is(err, cache.ErrNotFound) {
		adminError(w, http.StatusNotFound, fmt.Errorf("%s is not pinned", img))
		return
	}
	if err != nil {
		adminError(w, http.StatusInternalServerError, err)
		return
	}
	adminJSON(w, pin)
}

// adminSetPin pins a tag to the digest in the body, or, with no digest,
// to what the upstream resolves it to now. The manifest is fetched into
// the cache first, so a pin never points at content the proxy cannot serve.
func (h *Handler) adminSetPin(w http.ResponseWriter, r *http.Request) {
	img, err := h.tagImage(r.PathValue("image"))
	if err != nil {
		adminError(w, http.StatusBadRequest, err)
		return
	}
	var body struct {
		Digest digest.Digest `json:"digest"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		adminError(w, http.StatusBadRequest, fmt.Errorf("body must be {\"digest\": \"sha256:…\"} or empty: %v", err))
		return
	}
	pin, err := h.SetPin(r.Context(), img, body.Digest)
	if err != nil {
		adminError(w, statusOf(err), err)
		return
	}
	adminJSON(w, pin)
}

func (h *Handler) adminDeletePin(w http.ResponseWriter, r *http.Request) {
	img, err := h.tagImage(r.PathValue("image"))
	if err != nil {
		adminError(w, http.StatusBadRequest, err)
		return
	}
	if err := h.store.DeletePin(r.Context(), img.Registry, img.Repository, img.Tag); err != nil {
		adminError(w, http.StatusInternalServerError, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) adminRefreshPin(w http.ResponseWriter, r *http.Request) {
	img, err := h.tagImage(r.PathValue("image"))
	if err != nil {
		adminError(w, http.StatusBadRequest, err)
		return
	}
	res, err := h.RefreshPin(r.Context(), img)
	if err != nil {
		adminError(w, statusOf(err), err)
		return
	}
	adminJSON(w, res)
}

func (h *Handler) tagImage(ref string) (Image, error) {
	img, err := ParseImage(h.cfg, ref)
	if err != nil {
		return Image{}, err
	}
	if img.Digest != "" {
		return Image{}, fmt.Errorf("%q: pins bind a tag; give registry/repository:tag without a digest", ref)
	}
	return img, nil
}

// SetPin pins img's tag to dgst, or to the upstream's current resolution
// when dgst is empty. The manifest is cached first.
func (h *Handler) SetPin(ctx context.Context, img Image, dgst digest.Digest) (cache.Pin, error) {
	rt, apiErr := h.routeFor(img)
	if apiErr != nil {
		return cache.Pin{}, apiErr
	}
	var m cache.Manifest
	if dgst == "" {
		res, err := h.resolveTag(ctx, rt, nil)
		if err != nil {
			return cache.Pin{}, fromUpstream(rt, err)
		}
		m = res.manifest
	} else {
		digestRoute := *rt
		digestRoute.reference = dgst.String()
		res, apiErr := h.manifestByDigest(ctx, &digestRoute, nil)
		if apiErr != nil {
			return cache.Pin{}, apiErr
		}
		m = res.manifest
	}
	pin := cache.Pin{Registry: img.Registry, Repository: img.Repository, Tag: img.Tag,
		Digest: m.Digest, MediaType: m.MediaType, Policy: PolicyManual, PinnedAt: h.now().UTC()}
	return pin, h.store.PutPin(ctx, pin)
}

// RefreshPin resolves the tag upstream now and moves its pin (keeping the
// pin's policy) if the digest changed.
func (h *Handler) RefreshPin(ctx context.Context, img Image) (PinRefresh, error) {
	rt, apiErr := h.routeFor(img)
	if apiErr != nil {
		return PinRefresh{}, apiErr
	}
	out := PinRefresh{Image: img.String()}
	old, err := h.store.GetPin(ctx, img.Registry, img.Repository, img.Tag)
	switch {
	case err == nil:
		out.Old = old.Digest
	case errors.Is(err, cache.ErrNotFound):
		old.Policy = PolicyManual
	default:
		return PinRefresh{}, err
	}
	res, err := h.resolveTag(ctx, rt, nil)
	if err != nil {
		return PinRefresh{}, fromUpstream(rt, err)
	}
	out.New, out.Changed = res.manifest.Digest, res.manifest.Digest != out.Old
	if out.Changed {
		err = h.store.PutPin(ctx, cache.Pin{Registry: img.Registry, Repository: img.Repository, Tag: img.Tag,
			Digest: res.manifest.Digest, MediaType: res.manifest.MediaType, Policy: old.Policy, PinnedAt: h.now().UTC()})
	}
	return out, err
}

func (h *Handler) routeFor(img Image) (*route, *apiError) {
	u, ok := h.cfg.Upstream(img.Registry)
	if !ok {
		return nil, newAPIError(http.StatusNotFound, notFoundCode(""), "registry %q is not a configured upstream", img.Registry)
	}
	return &route{kind: kindManifest, registry: u.Name, repository: img.Repository, reference: img.Tag, upstream: u}, nil
}

func statusOf(err error) int {
	var apiErr *apiError
	if errors.As(err, &apiErr) {
		return apiErr.status
	}
	return http.StatusInternalServerError
}

func adminJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func adminError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}
